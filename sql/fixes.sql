-- fixes.sql: how export repairs the fixable problems that sql/checked_samples.sql reports in `fixes`.
--
-- Decides:  the exported turns of a selected sample (never dropped for a fix):
--   surrounding_whitespace  every turn value is stripped of leading/trailing whitespace (RE2 \s)
--   image_tag_missing       images but no `<image>` tag (and at least one turn): one `<image>\n` per
--                           image is put at the start of the first turn (what LLaVA's loader assumes)
--           A NULL turn list stays NULL and a text-only sample never gets a tag.
-- Inputs:   the columns of view checked_samples: conversations, fixes, n_images, n_image_tags.
-- Output:   macro fixed_conversations(conversations, fixes, n_images, n_image_tags) → the turns as
--           exported. Plain lambdas only (a lambda capturing an outer column is several times
--           slower), in one CASE: most samples need no fix and take its first branch.
-- Adding a fix: a reason in checked_samples' `fixes`, and its repair here.

create or replace macro stripped_turns(turns) as
list_transform(turns, lambda t: {'from': t['from'], 'value': regexp_replace(t.value, '^\s+|\s+$', '', 'g')});

create or replace macro image_tagged_turns(turns, n_images) as
list_concat([{'from': turns[1]['from'], 'value': repeat('<image>' || chr(10), n_images) || turns[1].value}], turns[2:]);

create or replace macro fixed_conversations(conversations, fixes, n_images, n_image_tags) as
case
    when len(fixes) = 0 then conversations  -- no fix to apply: nearly every sample
    when list_contains(fixes, 'surrounding_whitespace')
         and coalesce(n_images > 0 and n_image_tags = 0 and len(conversations) > 0, false)
        then image_tagged_turns(stripped_turns(conversations), n_images)
    when list_contains(fixes, 'surrounding_whitespace') then stripped_turns(conversations)
    when coalesce(n_images > 0 and n_image_tags = 0 and len(conversations) > 0, false)
        then image_tagged_turns(conversations, n_images)
    else conversations
end;
