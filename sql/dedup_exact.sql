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
-- Keys:     the phash list and conversations md5 of view sample_content_keys (sql/dedup_keys.sql).
-- Inputs:   views sample_content_keys, dedup_settings (sql/dedup_keys.sql).
-- Params:   getvariable('dedup_scope')         'source' (default) or 'global'
--           getvariable('dedup_consider_text') default true
-- Output:   one row per duplicate sample: sample_id, source, kept_sample_id (the earlier sample it
--           duplicates), dup_key (md5 of the compared content), group_size (samples sharing it).

-- parameters are checked first, so a typo fails loudly even on an empty lake
set variable dedup_parameters_checked = case when coalesce(getvariable('dedup_scope'), 'source') not in ('source', 'global')
            then error('dedup_scope must be source or global') end is null;

with
settings as (select * from dedup_settings),  -- sql/dedup_keys.sql
keyed_samples as (  -- the content keys of sql/dedup_keys.sql
    select k.sample_id, k.source, k.source_file, k.source_row,
           case when settings.scope = 'global' then '' else k.source end as scope_key,
           case
               when k.n_images = 0 then
                   case when settings.consider_text then md5('text-only|' || k.conversations_md5) end
               when k.phashes is not null then
                   md5('phashes|' || k.phashes
                       || case when settings.consider_text then '|' || k.conversations_md5 else '' end)
           end as dup_key
    from sample_content_keys k, settings
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
