"""Mixture recipes: YAML → a validated `Recipe` → one DuckDB query deciding every sample's fate.

A recipe names sources and, for each, which samples to take (see recipes/README.md):

    name: si-mix-v1
    seed: 42
    defaults: {checks: pass, dedup: exact, near_dup_k: 2}
    sources:
      - source: sharegpt4v
        sampling: random:30%        # all | first:N | first:P% | end:N | end:P% | random:N | random:P%
        where: "loss between 0.5 and 4"
        repeat: 2

The compiled query gives every sample of the named sources one decision, in this order: `checks`
(blocking problems of view checked_samples, sql/checked_samples.sql), `where` (the recipe's SQL filter
is false or NULL), `sampling` (not picked), then `dedup_exact` and `near_dup` (decided among the
samples selected so far: one per duplicate group stays, see dedup_ctes), else NULL = selected.
Sampling follows LLaVA-NeXT's data yaml: it applies to what checks and `where` left, `P%` takes
ceil(P·n/100) samples, `first`/`end` count in source order (file, row), and `random` ranks by
md5(seed || sample_id) — deterministic for a seed and a lake version, and one source's pick never
depends on another source being in the recipe (dedup comes after the picks).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from etl import schema as S
from etl.derived import StaleDerivedTable, check_fresh, committed_versions, table_info
from etl.sqlrun import sql_literal

STRATEGIES = ("all", "first", "end", "random")
CHECK_MODES = ("pass", "off")
DEDUP_MODES = ("exact", "none")
SOURCE_KEYS = {"source", "sampling", "where", "repeat", "checks", "dedup", "near_dup_k"}
DEFAULT_KEYS = {"checks", "dedup", "near_dup_k", "max_text_chars"}
RECIPE_KEYS = {"name", "seed", "defaults", "sources", "description", "dedup_prefer"}
SAMPLING = re.compile(r"^(first|end|random):(\d+)(%?)$")
# Removal reasons in decision order; NULL means selected.
REMOVAL_REASONS = ("checks", "where", "sampling", "dedup_exact", "near_dup")


class RecipeError(ValueError):
    """The recipe is invalid or cannot run against this lake; the message says what to change."""


@dataclass(frozen=True)
class Sampling:
    """How many of a source's eligible samples to take, LLaVA-NeXT style."""

    strategy: str = "all"
    number: int | None = None  # N, or P when `percent`
    percent: bool = False

    @classmethod
    def parse(cls, text: object, where: str) -> "Sampling":
        text = "all" if text is None else str(text).strip()
        if text == "all":
            return cls()
        match = SAMPLING.match(text)
        if not match:
            raise RecipeError(f"{where}: sampling {text!r} is not all, first:N, first:P%, end:…, random:… "
                              "(N a count, P an integer percent)")
        strategy, number, percent = match.group(1), int(match.group(2)), match.group(3) == "%"
        if number < 1 or (percent and number > 100):
            raise RecipeError(f"{where}: sampling {text!r}: the number must be ≥ 1 (and a percent ≤ 100)")
        return cls(strategy, number, percent)

    def __str__(self) -> str:
        return "all" if self.strategy == "all" else f"{self.strategy}:{self.number}{'%' if self.percent else ''}"

    def wanted_sql(self, eligible: str) -> str:
        """SQL for how many samples to take out of `eligible` (LLaVA-NeXT: ceil(P·len/100))."""
        if self.strategy == "all":
            return eligible
        if self.percent:
            return f"ceil({self.number} * {eligible} / 100)::bigint"
        return str(self.number)


@dataclass(frozen=True)
class SourceSpec:
    """One `sources:` entry with the defaults applied."""

    source: str
    sampling: Sampling = field(default_factory=Sampling)
    where: str | None = None
    repeat: int = 1
    checks: str = "pass"
    dedup: str = "none"
    near_dup_k: int | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    sources: tuple[SourceSpec, ...]
    max_text_chars: int | None = None
    text: str = ""  # the YAML as written (hashed into the manifest)
    dedup_prefer: tuple[str, ...] = ()  # sources whose copy dedup keeps first, in this order

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def as_dict(self) -> dict:
        """The normalised recipe (defaults applied), as recorded in manifests."""
        return {
            "name": self.name, "seed": self.seed, "max_text_chars": self.max_text_chars,
            "dedup_prefer": list(self.dedup_prefer),
            "sources": [{"source": s.source, "sampling": str(s.sampling), "where": s.where, "repeat": s.repeat,
                         "checks": s.checks, "dedup": s.dedup, "near_dup_k": s.near_dup_k} for s in self.sources],
        }


# -- parsing ------------------------------------------------------------------------------------------
def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    return parse_recipe(path.read_text(encoding="utf-8"), str(path))


def parse_recipe(text: str, where: str = "recipe") -> Recipe:
    """Validate recipe YAML text; every mistake is a RecipeError naming the key and what is allowed."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise RecipeError(f"{where}: a recipe is a mapping with name, seed, defaults, sources")
    _no_unknown_keys(doc, RECIPE_KEYS, where)
    name = doc.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise RecipeError(f"{where}: `name` must be a file-name-safe string (letters, digits, . _ -), got {name!r}")
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipeError(f"{where}: `seed` must be an integer, got {seed!r}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise RecipeError(f"{where}: `defaults` must be a mapping")
    _no_unknown_keys(defaults, DEFAULT_KEYS, f"{where}: defaults")
    entries = doc.get("sources")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{where}: `sources` must be a non-empty list")
    sources = tuple(_source_spec(e, defaults, f"{where}: sources[{i}]") for i, e in enumerate(entries))
    names = [s.source for s in sources]
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}: a source is listed twice ({names}); use `repeat` to up-weight it")
    max_chars = defaults.get("max_text_chars")
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise RecipeError(f"{where}: defaults.max_text_chars must be a positive integer")
    prefer = doc.get("dedup_prefer") or []
    if isinstance(prefer, str):
        prefer = [prefer]
    if not isinstance(prefer, list) or any(p not in names for p in prefer) or len(set(prefer)) != len(prefer):
        raise RecipeError(f"{where}: `dedup_prefer` must list sources of the recipe, each once (sources: {names}), "
                          f"got {prefer!r}")
    return Recipe(name, seed, sources, max_chars, text, tuple(prefer))


def _source_spec(entry: object, defaults: Mapping, where: str) -> SourceSpec:
    if isinstance(entry, str):
        entry = {"source": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or not entry["source"]:
        raise RecipeError(f"{where}: each source needs `source: NAME`")
    _no_unknown_keys(entry, SOURCE_KEYS, where)
    merged = {**defaults, **entry}
    checks = _mode(merged.get("checks", "pass"), on="pass", off="off")
    dedup = _mode(merged.get("dedup", "none"), on="exact", off="none")
    if checks not in CHECK_MODES:
        raise RecipeError(f"{where}: checks must be one of {CHECK_MODES}, got {checks!r}")
    if dedup not in DEDUP_MODES:
        raise RecipeError(f"{where}: dedup must be one of {DEDUP_MODES}, got {dedup!r}")
    repeat, k = merged.get("repeat", 1), merged.get("near_dup_k")
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise RecipeError(f"{where}: repeat must be an integer ≥ 1, got {repeat!r}")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 64):
        raise RecipeError(f"{where}: near_dup_k must be an integer 0..64 or absent, got {k!r}")
    where_sql = merged.get("where")
    if where_sql is not None and (not isinstance(where_sql, str) or ";" in where_sql):
        raise RecipeError(f"{where}: `where` must be one SQL boolean expression (no `;`)")
    return SourceSpec(entry["source"], Sampling.parse(merged.get("sampling"), where), where_sql, repeat,
                      checks, dedup, k)


def _mode(value: object, on: str, off: str) -> str:
    """YAML 1.1 reads `off`/`no`/`on`/`yes` as booleans: map them back to the mode names."""
    if isinstance(value, bool):
        return on if value else off
    return str(value)


def _no_unknown_keys(doc: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


# -- compiling ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompiledRecipe:
    """The recipe as SQL over the lake views: one `with … decisions` chain, several final selects."""

    recipe: Recipe
    ctes: str  # "with …, decisions as (…)" — every sample of the recipe's sources with its decision

    def decisions_sql(self, columns: str = "*") -> str:
        """Every sample of the recipe's sources with `removed_by` (NULL = selected)."""
        return f"{self.ctes}\nselect {columns}\nfrom decisions"

    def selection_sql(self) -> str:
        """The mixture: selected samples, repeats expanded, in output order (what --dry-run prints)."""
        return (f"{self.ctes}\n"
                "select source_index, unnest(range(repeat)) as repeat_index,\n"
                "       sample_id, source, source_file, source_row, orig_id, image_ids, conversations, fixes\n"
                "from decisions\n"
                "where removed_by is null\n"
                "order by source_index, repeat_index, source_file, source_row, sample_id;")

    def script(self) -> str:
        """A DuckDB shell script: parameters, then the selection query."""
        header = (f"-- recipe {self.recipe.name} (sha256 {self.recipe.sha256[:16]}), seed {self.recipe.seed}\n"
                  "-- compiled by etl/recipe.py; run inside `python -m etl shell` (views samples, images, errors)\n")
        return header + "".join(f"set variable {k} = {v};\n" for k, v in self.variables().items()) + self.selection_sql()

    def variables(self) -> dict[str, int]:
        return {"max_text_chars": self.recipe.max_text_chars} if self.recipe.max_text_chars else {}


def compile_recipe(recipe: Recipe, tables: Mapping[str, Sequence[str]]) -> CompiledRecipe:
    """Compose the recipe's CTEs; `tables` maps the lake's views to their columns (for dedup tables)."""
    ctes = []
    with_tags = any(_mentions(s.where, ("tags",)) for s in recipe.sources)  # joins only when a `where` uses them
    with_stats = any(_mentions(s.where, IMAGE_STAT_COLUMNS) for s in recipe.sources)
    with_clusters = any(_mentions(s.where, ("max_cluster_size",)) for s in recipe.sources)
    if with_clusters and S.IMAGE_CLUSTERS not in tables:
        raise RecipeError("a `where` uses max_cluster_size but the lake has no `image_clusters` table: "
                          "run `python -m etl dedup --near K` first")
    if with_tags:
        ctes.append(SAMPLE_TAGS_CTE)
    if with_clusters:
        ctes.append(sample_cluster_sizes_cte(recipe))
    ctes.append(recipe_samples_cte(recipe, with_tags, with_stats, with_clusters))
    ctes.append(filtered_cte(recipe))
    if _dedups(recipe):
        ctes.extend(sampling_ctes(recipe, "recipe_filtered", "recipe_sampled"))
        ctes.extend(dedup_ctes(recipe, tables, "recipe_sampled"))
    else:
        ctes.extend(sampling_ctes(recipe, "recipe_filtered", "decisions"))
    return CompiledRecipe(recipe, "with " + ",\n".join(ctes))


def _mentions(where: str | None, names: Sequence[str]) -> bool:
    return bool(where) and any(re.search(rf"\b{name}\b", where) for name in names)


def _dedups(recipe: Recipe) -> bool:
    return any(s.dedup == "exact" or s.near_dup_k is not None for s in recipe.sources)


def _source_names(recipe: Recipe) -> str:
    return ", ".join(sql_literal(s.source) for s in recipe.sources)


SAMPLE_TAGS_CTE = """\
sample_tags as (
    -- a sample's tags: the union of its images' RAM++ tags (NULL while any image is untagged)
    select r.sample_id,
           case when bool_and(i.tags is not null) then list_sort(list_distinct(flatten(list(i.tags)))) end as tags
    from sample_image_positions r
    left join images i using (image_id)
    group by r.sample_id
)"""
# per-sample image properties of sql/sample_images.sql a `where` may use (joined only when it does)
IMAGE_STAT_COLUMNS = ("min_width", "max_width", "min_height", "max_height", "min_aspect_ratio", "max_aspect_ratio",
                      "min_nbytes", "max_nbytes", "image_formats")


def sample_cluster_sizes_cte(recipe: Recipe) -> str:
    return f"""\
sample_cluster_sizes as (
    -- the largest near-duplicate cluster among a sample's images (table image_clusters of
    -- `python -m etl dedup --near K`); an image in no cluster is a cluster of 1
    select p.sample_id, coalesce(max(c.cluster_size), 1) as max_cluster_size
    from sample_image_positions p left join image_clusters c using (image_id)
    where p.source in ({_source_names(recipe)})
    group by p.sample_id
)"""


def recipe_samples_cte(recipe: Recipe, with_tags: bool, with_stats: bool = False, with_clusters: bool = False) -> str:
    """Samples of the recipe's sources with the check results (view checked_samples of
    sql/checked_samples.sql; unchecked_samples, `problems` NULL, when no source checks and no `where`
    reads them: no scan of the image references), and the tags / image properties a `where` uses."""
    extra, joins = [], []
    if with_tags:
        extra.append("coalesce(t.tags, case when len(s.image_ids) = 0 then [] end) as tags")
        joins.append("left join sample_tags t using (sample_id)")
    if with_stats:
        extra.append(", ".join(f"st.{c}" for c in IMAGE_STAT_COLUMNS))
        joins.append("left join sample_image_stats st using (sample_id)")
    if with_clusters:
        extra.append("cl.max_cluster_size")
        joins.append("left join sample_cluster_sizes cl using (sample_id)")
    columns = "".join(f",\n           {e}" for e in extra)
    joined = "".join(f"\n    {j}" for j in joins)
    checked = any(s.checks == "pass" or _mentions(s.where, ("problems",)) for s in recipe.sources)
    return f"""\
recipe_samples as (
    -- every samples column + problems, fixes, n_images, n_image_tags, text_chars (sql/checked_samples.sql)
    select s.*{columns}
    from {"checked_samples" if checked else "unchecked_samples"} s{joined}
    where s.source in ({_source_names(recipe)})  -- reads and checks only the recipe's sources
)"""


def _per_source(recipe: Recipe, values) -> str:
    return "".join(f"\n                when {sql_literal(s.source)} then {v}" for s, v in zip(recipe.sources, values))


def filter_sql(spec: SourceSpec) -> str:
    """The first per-sample filter that removes a sample of this source (NULL: kept)."""
    reasons = []
    if spec.checks == "pass":
        reasons.append("when len(s.problems) > 0 then 'checks'")
    if spec.where:
        reasons.append(f"when not coalesce(({spec.where}), false) then 'where'")
    if not reasons:
        return "null::varchar"
    return "case\n" + "".join(f"                        {r}\n" for r in reasons) + "                    end"


def filtered_cte(recipe: Recipe) -> str:
    """One pass over recipe_samples for every source (no union of per-source scans: DuckDB would
    materialise the shared scan with every column a consumer reads, conversations included): each
    source's checks and `where` in a CASE on `source`."""
    comments = "".join(f"\n    -- {s.source}: checks {s.checks}, dedup {s.dedup}, near_dup_k {s.near_dup_k}, "
                       f"where {s.where!r}, sampling {s.sampling}, repeat {s.repeat}" for s in recipe.sources)
    return f"""recipe_filtered as ({comments}
    select case s.source{_per_source(recipe, range(len(recipe.sources)))} end as source_index,
           case s.source{_per_source(recipe, (s.repeat for s in recipe.sources))} end as repeat,
           s.*,
           case s.source{_per_source(recipe, (filter_sql(s) for s in recipe.sources))} end as removed_by
    from recipe_samples s
)"""


def dedup_ctes(recipe: Recipe, tables: Mapping[str, Sequence[str]], kept: str) -> list[str]:
    """Dedup within the mixture, among the samples the recipe selects (`kept`: after checks, `where`
    and sampling, so a pick never moves and a duplicate group's content is never lost): in each
    group a sample of a source that asks for dedup is removed unless it comes first in (sources that
    do not dedup first — their samples are never removed —, `dedup_prefer` position, recipe order,
    source_file, source_row, sample_id). A source left out of the recipe removes nothing.
    `dedup: exact` groups samples with the same image phashes and conversations (the keys of
    sql/dedup_keys.sql, computed now: never stale); `near_dup_k: k` then groups samples whose images
    are in the same near-duplicate clusters (table image_clusters of `python -m etl dedup --near k`)
    and whose conversations are equal."""
    prefer = "".join(f" when {sql_literal(name)} then {i}" for i, name in enumerate(recipe.dedup_prefer))
    prefer_rank = f"case source{prefer} else {len(recipe.dedup_prefer)} end" if prefer else "0"
    exact = [i for i, s in enumerate(recipe.sources) if s.dedup == "exact"]
    near_ks = sorted({s.near_dup_k for s in recipe.sources if s.near_dup_k is not None})
    names = _source_names(recipe)
    ctes = [f"""recipe_dedup_candidates as (
    -- the samples dedup decides among: those the recipe selects so far
    select sample_id, source, source_index, {prefer_rank} as prefer_rank, source_file, source_row
    from {kept}
    where removed_by is null
)"""]
    groups = []  # (cte, reason, indexes of the sources it removes from, "key" subquery)
    if exact:
        groups.append(("recipe_exact_duplicates", "dedup_exact", exact, f"""(select sample_id,
                       case when n_images = 0 then md5('text-only|' || conversations_md5)
                            when phashes is not null then md5('phashes|' || phashes || '|' || conversations_md5)
                       end as group_key
                from sample_content_keys where source in ({names}))"""))
    for k in near_ks:
        if S.IMAGE_CLUSTERS not in tables:
            raise RecipeError(f"the recipe asks for `near_dup_k: {k}` but the lake has no `{S.IMAGE_CLUSTERS}` "
                              f"table: run `python -m etl dedup --near {k}` first (or remove near_dup_k)")
        # each sample's images in order, an image replaced by its cluster (as sql/dedup_near.sql does)
        groups.append((f"recipe_near_duplicates_k{k}", "near_dup",
                       [i for i, s in enumerate(recipe.sources) if s.near_dup_k == k], f"""(select p.sample_id,
                       md5(array_to_string(list(coalesce(ic.cluster_id, p.image_id) order by p.position), ',')
                           || '|' || any_value(k.conversations_md5)) as group_key
                from sample_image_positions p
                join sample_content_keys k using (sample_id)
                left join image_clusters ic on ic.image_id = p.image_id and ic.near_k = {k}
                where p.source in ({names})
                group by p.sample_id)"""))
    order = "prefer_rank, source_index, source_file, source_row, sample_id"
    for n, (cte, reason, removes, keys) in enumerate(groups):
        removing = f"c.source_index in ({', '.join(map(str, removes))})"
        earlier = "".join(f"\n          and c.sample_id not in (select sample_id from {g[0]})" for g in groups[:n])
        ctes.append(f"""{cte} as (
    -- {reason}: in each group, every sample of a deduplicating source but the first
    select sample_id
    from (select c.sample_id, {removing} as removable,
                 row_number() over (partition by k.group_key
                                    order by {removing}, {", ".join("c." + o for o in order.split(", "))}) as occurrence
          from recipe_dedup_candidates c
          join {keys} k using (sample_id)
          where k.group_key is not null{earlier})
    where removable and occurrence > 1
)""")
    verdicts = "".join(f"\n                when sample_id in (select sample_id from {cte}) then '{reason}'"
                       for cte, reason, _, _ in groups)
    ctes.append(f"""decisions as (
    select * exclude (removed_by),
           case when removed_by is not null then removed_by{verdicts} end as removed_by
    from {kept}
)""")
    return ctes


def check_derived_inputs(con, recipe: Recipe, lake, pins: Mapping[str, int] | None = None) -> dict:
    """The derived tables the recipe's decisions read ({decision: {...}}, for the manifest), checked
    fresh. `dedup: exact` computes its keys from the lake now (no table); `near_dup_k` and a `where`
    on max_cluster_size need `image_clusters` computed (for that k) from the images as they are now —
    otherwise a RecipeError names the `dedup --near` to run."""
    used: dict[str, dict] = {}
    if any(_mentions(s.where, ("max_cluster_size",)) for s in recipe.sources):
        version = (pins or committed_versions(lake)).get(S.IMAGE_CLUSTERS)
        info = table_info(lake, S.IMAGE_CLUSTERS, version)
        try:
            check_fresh(con, info, S.IMAGE_CLUSTERS, f"python -m etl dedup --near {info['params'].get('near_k')}")
        except StaleDerivedTable as exc:
            raise RecipeError(str(exc)) from exc
        used["where"] = {"table": S.IMAGE_CLUSTERS, **info}
    if any(s.dedup == "exact" for s in recipe.sources):
        used["dedup_exact"] = {"decided": "within the recipe", "keys": "sql/dedup_keys.sql, computed at export"}
    wanted = sorted({s.near_dup_k for s in recipe.sources if s.near_dup_k is not None})
    if wanted:
        version = (pins or committed_versions(lake)).get(S.IMAGE_CLUSTERS)
        if version is None:
            raise RecipeError(f"the recipe asks for near_dup_k {wanted} but the lake has no `{S.IMAGE_CLUSTERS}` "
                              f"table: run `python -m etl dedup --near {wanted[0]}` first")
        info = table_info(lake, S.IMAGE_CLUSTERS, version)
        computed = info["params"].get("near_k")
        if len(wanted) > 1 or computed != wanted[0]:
            raise RecipeError(f"the recipe asks for near_dup_k {wanted} but `{S.IMAGE_CLUSTERS}` holds near_k "
                              f"{computed}: run `python -m etl dedup --near {wanted[0]}` first")
        try:
            check_fresh(con, info, S.IMAGE_CLUSTERS, f"python -m etl dedup --near {computed}")
        except StaleDerivedTable as exc:
            raise RecipeError(str(exc)) from exc
        used["near_dup"] = {"near_k": computed, "table": S.IMAGE_CLUSTERS, **info}
    return used


# The number of samples the filters kept in the source (on its kept rows; removed rows never use it).
# Not `count(*) FILTER (WHERE …) OVER ()`: DuckDB 2.0 counts a filtered window frame row by row for
# every row, quadratic in the source (a 950k-row source took ~190 s; duckdb/duckdb#25935). Counting
# over the row_number's own partition reads each partition once and shares its partitioning.
ELIGIBLE_SQL = "count(source_index) over (partition by source_index, removed_by is null)"


def sampling_ctes(recipe: Recipe, kept: str, name: str) -> list[str]:
    """CTE `name`: the rows of `kept` with, only when a source samples, one window ranking each
    source's kept samples in its own order (no sort of the sources otherwise)."""
    sampled = [(i, s) for i, s in enumerate(recipe.sources) if s.sampling.strategy != "all"]
    if not sampled:  # nothing to rank: no sort of the sources
        return [f"{name} as (\n    select * from {kept}\n)"]
    # random: md5(seed || sample_id), sample_id; first/end: source_file, source_row, sample_id (source
    # order). With both kinds, a random source's rows rank on (md5, sample_id) first: sample_id is
    # unique, so the source-order keys after it never decide. Fewer keys when all agree: a cheaper sort.
    random = [i for i, s in sampled if s.sampling.strategy == "random"]
    md5 = f"md5({sql_literal(str(recipe.seed))} || sample_id)"
    if len(random) == len(sampled):
        order = f"{md5}, sample_id"
    elif not random:
        order = "source_file, source_row, sample_id"
    else:
        among = f"source_index in ({', '.join(map(str, random))})"
        order = (f"case when {among} then {md5} end, case when {among} then sample_id end, "
                 "source_file, source_row, sample_id")
    picked = []
    for i, spec in sampled:
        wanted = spec.sampling.wanted_sql("eligible")
        keep = f"pick_rank > eligible - {wanted}" if spec.sampling.strategy == "end" else f"pick_rank <= {wanted}"
        picked.append(f"\n                when {i} then case when {keep} then null else 'sampling' end")
    return [
        f"""recipe_ranks as (
    -- sampling: rank the samples the filters kept, per source, in its order; the window sorts only
    -- these keys, not every column the decisions carry (half the time of a window over all of them)
    select sample_id,
           row_number() over (partition by source_index, removed_by is null order by {order}) as pick_rank,
           {ELIGIBLE_SQL} as eligible
    from {kept}
)""",
        f"""recipe_ranked as (
    select k.*, r.pick_rank, r.eligible
    from {kept} k
    join recipe_ranks r using (sample_id)
)""",
        f"""{name} as (
    select * exclude (pick_rank, eligible, removed_by),
           coalesce(removed_by, case source_index{"".join(picked)} end) as removed_by
    from recipe_ranked
)""",
    ]


def lake_columns(con) -> dict[str, list[str]]:
    """Every view/table of a DuckDB connection with its column names."""
    rows = con.execute("select table_name, column_name from information_schema.columns order by ordinal_position").fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables
