-- views.sql: the lake as SQL views, the same in Python (`python -m etl sql`) and in the DuckDB shell.
--
-- Inputs:  one relation per lake table named <table>_lance (a Lance dataset registered by
--          etl/sqlrun.py, or `from '<lake>/<table>.lance'` in the shell via the lance extension).
-- Output:  views images, samples, errors, runs, checkpoints. `images` never exposes the blob
--          column `image` (scans would return blob descriptors, not bytes); read bytes through
--          the Python API (etl.lake.Lake.image_bytes_by_id).

create or replace view images as
select * exclude (image) from images_lance;

create or replace view samples as
select * from samples_lance;

create or replace view errors as
select * from errors_lance;

create or replace view runs as
select * from runs_lance;

create or replace view checkpoints as
select * from checkpoints_lance;
