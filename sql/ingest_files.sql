-- ingest_files.sql: what each file of an ingest holds in the lake, to tell a file that yielded nothing
-- (e.g. read with the wrong --format) from one that did.
--
-- Inputs:      views samples, errors.
-- Parameters:  getvariable('ingest_sources'), getvariable('ingest_files'): the source and the lake
--              name (samples.source_file, errors.file) of each input file, two lists of equal length.
-- Output:      one row per input file: source, file, samples (in the lake, from any run) and
--              errors_by_kind (a map kind -> count of its ingest errors).

with input_files as (
    select unnest(getvariable('ingest_sources')) as source,
           unnest(getvariable('ingest_files')) as file
),
samples_per_file as (
    select source, source_file as file, count(*) as samples
    from samples
    where source_file in (select file from input_files)
    group by all
),
errors_per_kind as (
    select source, file, kind, count(*) as n
    from errors
    where stage = 'ingest' and file in (select file from input_files)
    group by all
),
errors_per_file as (
    select source, file, map(list(kind order by kind), list(n order by kind)) as errors_by_kind
    from errors_per_kind
    group by all
)
select f.source, f.file, coalesce(s.samples, 0) as samples, e.errors_by_kind
from input_files f
left join samples_per_file s using (source, file)
left join errors_per_file e using (source, file)
order by f.source, f.file
