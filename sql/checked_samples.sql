-- checked_samples.sql: what is wrong with each sample, as named reasons (one row per sample).
--
-- Decides: whether a sample is fit for training as it stands. Two lists per sample:
--   problems  blocking problems; a recipe with `checks: pass` keeps only samples with none.
--     no_turns                      conversations NULL or empty
--     odd_turn_count                not an even number of turns (a question without its answer)
--     roles_not_alternating         turn 1, 3, 5... not `human` or turn 2, 4, 6... not `gpt` (every
--                                   position is checked: the reference script only checked the even
--                                   ones, so a bad role at an odd position passed)
--     empty_turn                    a turn whose value is NULL, empty or whitespace only
--     more_image_tags_than_images   more `<image>` tags than images, including any tag in a text-only
--                                   sample (the reference script added `<image>` to text-only records)
--     fewer_image_tags_than_images  some but not all images have a tag: which image goes where is unknown
--     missing_image                 an image id the `images` table does not hold
--     undecodable_image             an image whose phash failed (an `errors` row of stage `phash` and
--                                   no phash); images never hashed are not suspected
--     text_too_long                 more characters in all turns than getvariable('max_text_chars')
--   fixes     problems export normalises instead of dropping the sample (never blocking):
--     image_tag_missing             images but no `<image>` tag: export puts one `<image>\n` per image
--                                   at the start of the first turn (what LLaVA's own loader assumes)
--     surrounding_whitespace        a non-empty turn value with leading/trailing whitespace: export strips it
--
-- Inputs:     views samples (sample_id, source, image_ids, conversations), images (image_id, phash),
--             errors (stage, error_id).
-- Parameters: getvariable('max_text_chars'): character limit over all turns (default 100000).
-- Output:     view checked_samples: every samples column + n_images, n_image_tags, text_chars,
--             problems list<varchar>, fixes list<varchar> (empty, never NULL, when there is nothing
--             to report). Recipes select from it (etl/recipe.py), sql/checks.sql reports it; a view
--             costs no scan of its own: a query reading it plans the samples scan once (+ one narrow
--             scan of the image references for missing_image / undecodable_image).
--             view unchecked_samples: the same columns with `problems` NULL (not checked): what a
--             recipe whose sources all skip the checks reads, for the fixes alone (one samples scan).
--             view fixable_samples: what both share, with the turn facts the problems are made of.
--             Adding a check: one more `case` in `problems` (or `fixes`, with its repair in sql/fixes.sql).

create or replace view fixable_samples as
with sample_facts as (
    -- one row per sample: every samples column (recipes filter on them) plus facts over its turns,
    -- computed on the sample's own list (a turn's position is the lambda's index) — no unnest, no
    -- group by, no join back to the samples. A NULL or empty conversations list has no turns.
    -- CASE evaluates its branch only where needed: most turns have no tag and no edge whitespace.
    -- Whitespace is RE2's \s, [\t\n\f\r ] (codes 9 10 12 13 32): the codes of the first and last
    -- character are tested first (cheap), a regex runs only for values starting or ending with one.
    select *,
           coalesce(len(image_ids), 0) as n_images,
           coalesce(list_count(conversations), 0) as n_turns,
           coalesce(list_sum(list_transform(conversations, lambda turn:
               case when contains(turn.value, '<image>')
                    then (length(turn.value) - length(replace(turn.value, '<image>', ''))) // 7 else 0 end)), 0)::bigint
               as n_image_tags,
           coalesce(list_sum(list_transform(conversations, lambda turn: length(turn.value))), 0)::bigint as text_chars,
           coalesce(list_bool_or(list_transform(conversations, lambda turn, turn_no: turn is not null
               and turn['from'] is distinct from (case when turn_no % 2 = 1 then 'human' else 'gpt' end))), false)
               as has_misplaced_role,
           coalesce(list_bool_or(list_transform(conversations, lambda turn: turn is not null
               and (turn.value is null or turn.value = ''
                    or (case when ascii(turn.value) in (9, 10, 12, 13, 32)
                             then regexp_full_match(turn.value, '\s*') else false end)))), false) as has_empty_turn,
           coalesce(list_bool_or(list_transform(conversations, lambda turn:
               case when ascii(turn.value) in (9, 10, 12, 13, 32) or ascii(turn.value[-1]) in (9, 10, 12, 13, 32)
                    then not regexp_full_match(turn.value, '\s*') else false end)), false)
               as has_surrounding_whitespace
    from samples
)
select *,
       list_filter([
           case when n_images > 0 and n_image_tags = 0 then 'image_tag_missing' end,
           case when has_surrounding_whitespace then 'surrounding_whitespace' end
       ], lambda r: r is not null) as fixes
from sample_facts;

create or replace view checked_samples as
with image_refs as (
    select sample_id, source, unnest(image_ids) as image_id
    from samples
),
undecodable_images as (
    -- images whose phash failed: a phash `errors` row and no phash (joined per image, not per reference)
    select distinct i.image_id
    from images i
    join errors e on e.error_id = 'phash/' || i.image_id
    where i.phash is null and e.stage = 'phash'
),
image_trouble_per_sample as (
    -- only the samples with a bad image reach the group by (most samples have none)
    select r.sample_id, r.source,
           bool_or(i.image_id is null) as has_missing_image,
           bool_or(u.image_id is not null) as has_undecodable_image
    from image_refs r
    left join images i using (image_id)
    left join undecodable_images u using (image_id)
    where i.image_id is null or u.image_id is not null
    group by r.sample_id, r.source
)
-- every samples column + n_images, n_image_tags, text_chars, problems, fixes: recipes' `where`
-- filters see these columns
select f.* exclude (n_turns, has_misplaced_role, has_empty_turn, has_surrounding_whitespace, fixes),
       list_filter([
           case when f.n_turns = 0 then 'no_turns' end,
           case when f.n_turns % 2 = 1 then 'odd_turn_count' end,
           case when f.has_misplaced_role then 'roles_not_alternating' end,
           case when f.has_empty_turn then 'empty_turn' end,
           case when f.n_image_tags > f.n_images then 'more_image_tags_than_images' end,
           case when f.n_image_tags > 0 and f.n_image_tags < f.n_images then 'fewer_image_tags_than_images' end,
           case when coalesce(t.has_missing_image, false) then 'missing_image' end,
           case when coalesce(t.has_undecodable_image, false) then 'undecodable_image' end,
           case when f.text_chars > coalesce(getvariable('max_text_chars'), 100000) then 'text_too_long' end
       ], lambda r: r is not null) as problems,
       f.fixes
from fixable_samples f
left join image_trouble_per_sample t using (sample_id, source);

-- the same columns as checked_samples, not checked
create or replace view unchecked_samples as
select * exclude (n_turns, has_misplaced_role, has_empty_turn, has_surrounding_whitespace, fixes),
       null::varchar[] as problems,
       fixes
from fixable_samples;
