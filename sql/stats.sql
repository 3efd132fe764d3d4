-- stats.sql: what is in the lake, per source.
--
-- Inputs:  views samples, images, errors.
-- Output:  one row per source: samples, text_only, multi_image, images (distinct, referenced by
--          the source), image_bytes (of those distinct images), errors (all stages) and
--          errors_by_kind (a map kind -> count). Sources that only have errors are listed too.

with samples_per_source as (
    select source,
           count(*) as samples,
           count(*) filter (where len(image_ids) = 0) as text_only,
           count(*) filter (where len(image_ids) > 1) as multi_image
    from samples
    group by source
),
images_per_source as (
    select s.source, count(*) as images, sum(i.nbytes) as image_bytes
    from (select distinct source, unnest(image_ids) as image_id from samples) s
    join images i using (image_id)
    group by s.source
),
error_kinds_per_source as (
    select source, kind, count(*) as n
    from errors
    where source is not null
    group by source, kind
),
errors_per_source as (
    select source, sum(n) as errors, map(list(kind order by kind), list(n order by kind)) as errors_by_kind
    from error_kinds_per_source
    group by source
),
all_sources as (
    select source from samples_per_source
    union
    select source from errors_per_source
)
select a.source,
       coalesce(s.samples, 0) as samples,
       coalesce(s.text_only, 0) as text_only,
       coalesce(s.multi_image, 0) as multi_image,
       coalesce(i.images, 0) as images,
       coalesce(i.image_bytes, 0)::bigint as image_bytes,
       coalesce(e.errors, 0)::bigint as errors,
       e.errors_by_kind
from all_sources a
left join samples_per_source s using (source)
left join images_per_source i using (source)
left join errors_per_source e using (source)
order by a.source;
