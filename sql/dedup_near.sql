-- dedup_near.sql: which images are near-duplicates, grouped into clusters with one representative,
-- and which samples those clusters make redundant.
--
-- Decides:  two images are near-duplicates when their perceptual hashes differ in at most near_k
--           bits (Hamming distance). Near-duplication is made transitive: a cluster is a connected
--           component of the "within near_k" graph (so a chain of re-encodes is one cluster even
--           when its ends are further apart than near_k). Images are global (content-addressed),
--           so clusters span sources. Each cluster's representative is its largest image
--           (width x height), then the smallest image_id: deterministic, and it keeps the best copy.
--           A sample is a near-duplicate when an earlier sample in scope has the same ordered list
--           of clusters (an image outside any cluster stands for itself) and, with
--           dedup_consider_text, the same conversations. Earlier = (source, source_file,
--           source_row, sample_id) order. Text-only samples are left to dedup_exact.sql.
-- Recall:   candidate pairs come from banding by the pigeonhole principle: the 64 bits are cut into
--           near_bands bands; two hashes within near_k bits differ in at most near_k bands, so they
--           agree on every band of at least one combination of (near_bands - near_k) bands. Joining
--           on each such combination finds every pair within near_k: recall is exactly 1.0.
--           More bands than near_k + 1 make the join keys longer (fewer false candidates on large
--           lakes) at the cost of more combinations: near_bands = near_k + 2 is the default.
-- Inputs:   view images (image_id, phash UBIGINT, width, height); images without phash are ignored.
--           view samples (sample_id, source, source_file, source_row, image_ids, conversations),
--           view sample_image_positions (sql/sample_images.sql).
-- Params:   getvariable('near_k')             max Hamming distance, default 2
--           getvariable('near_bands')         bands of the pigeonhole split, default near_k + 2
--           getvariable('dedup_scope')        'source' (default) or 'global': where "earlier" looks
--           getvariable('dedup_consider_text') also require equal conversations, default true
-- Output:   (after a parameter check) the statements before the last create temp table near_image_clusters:
--           one row per image in a cluster of at least two images (image_id, cluster_id =
--           representative image_id, is_representative, cluster_size, distance_to_representative);
--           on the way, temp tables near_combination_masks, near_distinct_hashes and near_pairs.
--           The last statement returns the samples to remove (sample_id, source, kept_sample_id, cluster_key).
-- Memory:   the band join runs in five parts (see near_pairs_in_part): 10.1M hashes at k = 3 need
--           ~1 GB, not the ~4 GB (spilling to disk) of one join over every combination.
-- Note:     phash is filtered through a cast: DuckDB cannot push a filter on a UBIGINT column down
--           into a Lance scan (pylance 14 / duckdb 2.0 Substrait error).

-- parameters are checked first, so a typo fails loudly even on an empty lake
set variable dedup_parameters_checked = case when coalesce(getvariable('near_k'), 2) not between 0 and 32
                 then error('near_k must be between 0 and 32')
            when coalesce(getvariable('near_bands'), coalesce(getvariable('near_k'), 2) + 2)
                 not between coalesce(getvariable('near_k'), 2) + 1 and 64
                 then error('near_bands must be > near_k and <= 64')
            when coalesce(getvariable('dedup_scope'), 'source') not in ('source', 'global')
                 then error('dedup_scope must be source or global')
       end is null;

create or replace temp table near_combination_masks as  -- one bit mask per combination of bands
with recursive
band_settings as (
    select coalesce(getvariable('near_k'), 2)::int as k,
           coalesce(getvariable('near_bands'), coalesce(getvariable('near_k'), 2) + 2)::int as bands
),
bands as (  -- band b covers bits [lo, hi) of the 64-bit hash
    select band, (64 * band) // bands as lo, (64 * (band + 1)) // bands as hi
    from (select unnest(range(bands)) as band, bands from band_settings)
),
band_masks as (
    select band, ((1::hugeint << hi) - (1::hugeint << lo))::ubigint as mask from bands
),
band_combinations(bands_used, last_band) as (  -- every set of (near_bands - near_k) bands
    select [band], band from band_masks
    union all
    select list_append(c.bands_used, m.band), m.band
    from band_combinations c, band_masks m, band_settings s
    where m.band > c.last_band and len(c.bands_used) < s.bands - s.k
)
select row_number() over (order by bands_used) as combination,
       sum(m.mask)::ubigint as mask  -- bands are disjoint, so the sum is their union
from (select bands_used, unnest(bands_used) as band from band_combinations, band_settings
      where len(bands_used) = bands - k) c
join band_masks m using (band)
group by bands_used;

create or replace temp table near_distinct_hashes as  -- images with equal hashes are one node
select phash, count(*) as n_images
from images
where phash::hugeint is not null
group by phash;

-- The pairs within near_k found through the combinations of one part (combination % 5 = part).
-- Memory: a part's join holds its combinations' keys of every distinct hash, so the work is cut
-- into five statements (10M hashes at k = 3: two combinations, 20M keys each) instead of one
-- join over every combination at once; pairs are filtered by distance before they are kept.
create or replace temp macro near_pairs_in_part(part) as table
with band_keys as not materialized (
    select h.phash, hash(c.combination, h.phash & c.mask) as band_key  -- a collision only adds a candidate
    from near_distinct_hashes h join near_combination_masks c on c.combination % 5 = part
)
select a.phash as phash_a, b.phash as phash_b
from band_keys a join band_keys b on a.band_key = b.band_key and a.phash < b.phash
where bit_count(xor(a.phash, b.phash)) <= coalesce(getvariable('near_k'), 2);

create or replace temp table near_pairs as select * from near_pairs_in_part(0);
insert into near_pairs select * from near_pairs_in_part(1);
insert into near_pairs select * from near_pairs_in_part(2);
insert into near_pairs select * from near_pairs_in_part(3);
insert into near_pairs select * from near_pairs_in_part(4);

create or replace temp table near_image_clusters as
with recursive
hashed_images as (
    select image_id, phash, coalesce(width, 0)::bigint * coalesce(height, 0) as pixels
    from images
    where phash::hugeint is not null
),
distinct_hashes as (select * from near_distinct_hashes),
pairs_within_k as (  -- a pair found through several combinations counts once
    select distinct phash_a, phash_b from near_pairs
),
edges as (
    select phash_a as src, phash_b as dst from pairs_within_k
    union all
    select phash_b, phash_a from pairs_within_k
),
connected_hashes(phash, component) using key (phash) as (  -- label propagation: smallest hash wins
    select distinct src, src from edges
    union
    select e.dst, min(c.component)
    from connected_hashes c
    join edges e on e.src = c.phash
    join recurring.connected_hashes current_label on current_label.phash = e.dst
    group by e.dst, current_label.component
    having min(c.component) < current_label.component
),
hash_components as (
    select phash, component from connected_hashes
    union all  -- hashes shared by several images but with no neighbour within k
    select phash, phash from distinct_hashes
    where n_images > 1 and phash not in (select phash from connected_hashes)
),
clustered_images as (
    select i.image_id, i.phash, i.pixels, hc.component
    from hashed_images i join hash_components hc using (phash)
),
representatives as (
    select component,
           first(image_id order by pixels desc, image_id) as representative_id,
           first(phash order by pixels desc, image_id) as representative_phash,
           count(*) as cluster_size
    from clustered_images
    group by component
)
select c.image_id,
       r.representative_id as cluster_id,
       c.image_id = r.representative_id as is_representative,
       r.cluster_size,
       bit_count(xor(c.phash, r.representative_phash))::int as distance_to_representative
from clustered_images c join representatives r using (component)
order by cluster_id, image_id;

with
settings as (select * from dedup_settings),  -- sql/dedup_keys.sql
cluster_lists as (  -- each sample's images in order, an image replaced by its cluster
    select p.sample_id, list(coalesce(c.cluster_id, p.image_id) order by p.position) as clusters,
           count(c.cluster_id) > 0 as touches_a_cluster
    from sample_image_positions p left join near_image_clusters c using (image_id)
    group by p.sample_id
),
keyed_samples as (
    select s.sample_id, s.source, s.source_file, s.source_row,
           case when settings.scope = 'global' then '' else s.source end as scope_key,
           md5(array_to_string(l.clusters, ',')
               || case when settings.consider_text then '|' || md5(to_json(s.conversations)) else '' end) as cluster_key
    from samples s join cluster_lists l using (sample_id), settings
    where l.touches_a_cluster
),
ranked_samples as (
    select *,
           first_value(sample_id) over same_key as kept_sample_id,
           row_number() over same_key as occurrence
    from keyed_samples
    window same_key as (partition by scope_key, cluster_key
                        order by source, source_file, source_row, sample_id)
)
select sample_id, source, kept_sample_id, cluster_key
from ranked_samples
where occurrence > 1
order by source, sample_id;
