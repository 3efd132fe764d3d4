-- sample_images.sql: image properties per image and per sample, for recipes (`where`) and ad-hoc SQL.
--
-- Decides:  nothing; it names facts the lake already holds so that filters can use them:
--   image_properties      every image with its `aspect_ratio` = width / height (NULL when a size is
--                         unknown or zero) beside width, height, nbytes, format, phash.
--   sample_image_positions one row per image reference: (sample_id, source, position 1.., image_id);
--                         the dedup files and the per-sample aggregates read it (written once here).
--   sample_image_stats    one row per sample with images: n_images and min/max over its images of
--                         width, height, aspect_ratio, nbytes, plus `image_formats` (distinct, sorted).
--                         An image missing from `images` counts as NULL (never as 0), so
--                         `min_width >= 336` is NULL — false in a recipe — for such a sample.
-- Inputs:   views samples (sample_id, source, image_ids), images (image_id, width, height, nbytes, format).
-- Output:   the three views above; nothing is computed until a query reads them.
-- Example:  select * from sample_image_stats where max_aspect_ratio > 3;   -- banner-shaped images

create or replace view image_properties as
select image_id, format, width, height, nbytes, phash,
       case when height > 0 and width > 0 then width / height end as aspect_ratio
from images;

create or replace view sample_image_positions as
select sample_id, source, unnest(image_ids) as image_id, generate_subscripts(image_ids, 1) as position
from samples
where len(image_ids) > 0;

create or replace view sample_image_stats as
select p.sample_id, p.source,
       count(*) as n_images,
       min(i.width) as min_width, max(i.width) as max_width,
       min(i.height) as min_height, max(i.height) as max_height,
       min(i.aspect_ratio) as min_aspect_ratio, max(i.aspect_ratio) as max_aspect_ratio,
       min(i.nbytes) as min_nbytes, max(i.nbytes) as max_nbytes,
       list_sort(list_distinct(list(i.format))) as image_formats
from sample_image_positions p
left join image_properties i using (image_id)
group by p.sample_id, p.source;
