-- checks.sql: the check results of every sample (the report of `python -m etl checks`).
--
-- Decides:  nothing itself; the checks and their reasons are the view checked_samples
--           (sql/checked_samples.sql), which recipes select from too.
-- Inputs:   view checked_samples.
-- Parameters: getvariable('max_text_chars') (read by the view; default 100000).
-- Output:   sample_id, source, n_images, n_image_tags, text_chars, problems, fixes.

select sample_id, source, n_images, n_image_tags, text_chars, problems, fixes
from checked_samples;
