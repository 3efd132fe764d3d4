-- doctor.sql: what in the lake contradicts itself (read by `python -m etl doctor`).
--
-- Inputs:  views samples, images, errors, checkpoints.
-- Output:  one row per problem: check, subject (what is wrong), source, file, detail.
--   dangling_image_id  a sample lists an image_id the images table does not hold
--   checkpoint_ahead   an ingest checkpoint says rows below N are in the lake, but the file's last
--                      sample or error row is further back (its rows were lost or deleted by hand)
--   duplicate_image    one image_id stored more than once

with sample_image_ids as (
    select sample_id, source, source_file, unnest(image_ids) as image_id
    from samples
),
dangling_image_ids as (
    select 'dangling_image_id' as "check", image_id as subject, source, source_file as file,
           'used by sample ' || min(sample_id) || ' and ' || (count(*) - 1) || ' more' as detail
    from sample_image_ids anti join images using (image_id)
    group by all
),
latest_ingest_checkpoints as (
    select substr(job, length('ingest:') + 1) as source, file, max(upto_row) as upto_row
    from checkpoints where starts_with(job, 'ingest:')
    group by all
),
rows_in_lake as (
    select source, file, max(row) as last_row
    from (select source, source_file as file, source_row as row from samples
          union all
          select source, file, row from errors where stage = 'ingest')
    group by all
),
checkpoints_ahead as (
    select 'checkpoint_ahead' as "check", source || '/' || file as subject, source, file,
           'checkpoint says rows < ' || upto_row || ' are in; the last row in the lake is '
           || coalesce(cast(last_row as varchar), 'none') as detail
    from latest_ingest_checkpoints left join rows_in_lake using (source, file)
    where upto_row > coalesce(last_row, -1) + 1
),
duplicate_images as (
    select 'duplicate_image' as "check", image_id as subject, null as source, null as file,
           'stored ' || count(*) || ' times' as detail
    from images group by image_id having count(*) > 1
)
select * from dangling_image_ids
union all select * from checkpoints_ahead
union all select * from duplicate_images
order by "check", subject;
