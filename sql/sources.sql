-- sources.sql: one row per source — how many files, samples and errors it has, when it was ingested.
--
-- Inputs:  views samples, errors, checkpoints (ingest checkpoints are job 'ingest:<source>', one per file).
-- Output:  source, files, samples, errors, first_ingest, last_ingest (times of its first and latest
--          checkpoint), ordered by source. `python -m etl sources` prints it.

with samples_per_source as (
    select source, count(*) as samples, count(distinct source_file) as sample_files
    from samples group by all
),
errors_per_source as (
    select source, count(*) as errors
    from errors where source is not null group by all
),
ingests_per_source as (
    select substr(job, length('ingest:') + 1) as source, count(distinct file) as files,
           min(updated_at) as first_ingest, max(updated_at) as last_ingest
    from checkpoints where starts_with(job, 'ingest:') group by all
),
every_source as (
    select source from samples_per_source
    union select source from errors_per_source
    union select source from ingests_per_source
)
select every_source.source,
       coalesce(ingests_per_source.files, samples_per_source.sample_files, 0) as files,
       coalesce(samples, 0) as samples,
       coalesce(errors, 0) as errors,
       first_ingest,
       last_ingest
from every_source
left join samples_per_source using (source)
left join errors_per_source using (source)
left join ingests_per_source using (source)
order by source;
