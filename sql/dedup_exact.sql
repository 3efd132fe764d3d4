-- dedup_exact.sql: which samples are exact duplicates of an earlier sample (the Infinity-MM rule).
--
-- Decides:  within one source (dedup_scope = 'source', the default) two samples are duplicates
--           when they have the same ordered list of image phashes (image i of one has the phash of
--           image i of the other) and, with dedup_consider_text (default true), the same
--           conversations. The first sample in (source, source_file, source_row, sample_id) order
--           is kept; every later one is a duplicate. Order matters: [a, b] and [b, a] differ.
--           A sample with an image that has no phash (not computed yet, or undecodable) is never a
--           duplicate: nothing is removed on missing evidence.
--           Text-only samples (no images) are deduplicated on their conversations alone when
--           dedup_consider_text is true, and never when it is false (data-juicer's semantics).
-- Canonical conversations: md5 of to_json(conversations), the list of {from, value} turns in order,
--           values compared exactly (no whitespace or case folding).
-- Inputs:   view images (image_id, phash UBIGINT); view samples (sample_id, source, source_file,
--           source_row, image_ids list<string>, conversations list<struct<from, value>>).
-- Params:   getvariable('dedup_scope')         'source' (default) or 'global'
--           getvariable('dedup_consider_text') default true
-- Output:   one row per duplicate sample: sample_id, source, kept_sample_id (the earlier sample it
--           duplicates), dup_key (md5 of the compared content), group_size (samples sharing it).

-- parameters are checked first, so a typo fails loudly even on an empty lake
set variable dedup_parameters_checked = case when coalesce(getvariable('dedup_scope'), 'source') not in ('source', 'global')
            then error('dedup_scope must be source or global') end is null;

with
settings as (
    select coalesce(getvariable('dedup_scope'), 'source') as scope,
           coalesce(getvariable('dedup_consider_text'), true)::boolean as consider_text
),
image_positions as (
    select sample_id, unnest(image_ids) as image_id, generate_subscripts(image_ids, 1) as position
    from samples
    where len(image_ids) > 0
),
phash_lists as (  -- each sample's image phashes in order; all_hashed is false if one is missing
    select p.sample_id,
           array_to_string(list(i.phash order by p.position), ',') as phashes,
           count(i.phash) = count(*) as all_hashed
    from image_positions p left join images i using (image_id)
    group by p.sample_id
),
keyed_samples as (
    select s.sample_id, s.source, s.source_file, s.source_row,
           case when settings.scope = 'global' then '' else s.source end as scope_key,
           md5(to_json(s.conversations)) as conversations_md5,
           case
               when coalesce(len(s.image_ids), 0) = 0 then
                   case when settings.consider_text then md5('text-only|' || conversations_md5) end
               when p.all_hashed then
                   md5('phashes|' || p.phashes
                       || case when settings.consider_text then '|' || conversations_md5 else '' end)
           end as dup_key
    from samples s left join phash_lists p using (sample_id), settings
),
ranked_samples as (
    select *,
           first_value(sample_id) over same_key as kept_sample_id,
           row_number() over same_key as occurrence,
           count(*) over (partition by scope_key, dup_key) as group_size
    from keyed_samples
    where dup_key is not null
    window same_key as (partition by scope_key, dup_key
                        order by source, source_file, source_row, sample_id)
)
select sample_id, source, kept_sample_id, dup_key, group_size
from ranked_samples
where occurrence > 1
order by source, sample_id;
