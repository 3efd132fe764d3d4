-- dedup_keys.sql: what two samples must share to be duplicates, one key per sample.
--
-- Decides:  the content a duplicate repeats. `phashes` is the ordered list of a sample's image
--           phashes ('a,b,c': image i of one sample has the phash of image i of the other), NULL
--           when one of its images has no phash yet (nothing is removed on missing evidence) and
--           '' for a text-only sample. `conversations_md5` is md5(to_json(conversations)): the
--           {from, value} turns in order, values compared exactly.
--           Read by sql/dedup_exact.sql (the lake-wide view of `python -m etl dedup`) and by a
--           recipe's `dedup: exact` (decided among the samples the recipe keeps, etl/recipe.py).
-- Inputs:   views samples, images (phash UBIGINT), sample_image_positions (sql/sample_images.sql).
-- Params:   getvariable('dedup_scope')         'source' (default) or 'global'
--           getvariable('dedup_consider_text') default true
-- Output:   view sample_content_keys (sample_id, source, source_file, source_row, n_images,
--           phashes, conversations_md5); view dedup_settings (scope, consider_text), the lake-wide
--           dedup's parameters with their defaults, read by sql/dedup_exact.sql and sql/dedup_near.sql.

create or replace view dedup_settings as
select coalesce(getvariable('dedup_scope'), 'source') as scope,
       coalesce(getvariable('dedup_consider_text'), true)::boolean as consider_text;

create or replace view sample_content_keys as
with phash_lists as (  -- each sample's image phashes in order; all_hashed is false if one is missing
    select p.sample_id,
           array_to_string(list(i.phash order by p.position), ',') as phashes,
           count(i.phash) = count(*) as all_hashed
    from sample_image_positions p left join images i using (image_id)
    group by p.sample_id
)
select s.sample_id, s.source, s.source_file, s.source_row,
       coalesce(len(s.image_ids), 0) as n_images,
       case when coalesce(len(s.image_ids), 0) = 0 then '' when p.all_hashed then p.phashes end as phashes,
       md5(to_json(s.conversations)) as conversations_md5
from samples s left join phash_lists p using (sample_id);
