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

The compiled query gives every sample of the named sources one decision, in this order:
`checks` (blocking problems of sql/checks.sql), `dedup_exact`, `near_dup`, `where` (the recipe's SQL
filter is false or NULL), `sampling` (not picked), else NULL = selected. Sampling follows LLaVA-NeXT's
data yaml: it applies to what the filters left, `P%` takes ceil(P·n/100) samples, `first`/`end` count in
source order (file, row), and `random` ranks by md5(seed || sample_id) — deterministic for a seed and a
lake version, and one source's pick never depends on another source being in the recipe.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from etl import schema as S
from etl.sqlrun import SQL_DIR

STRATEGIES = ("all", "first", "end", "random")
CHECK_MODES = ("pass", "off")
DEDUP_MODES = ("exact", "none")
SOURCE_KEYS = {"source", "sampling", "where", "repeat", "checks", "dedup", "near_dup_k"}
DEFAULT_KEYS = {"checks", "dedup", "near_dup_k", "max_text_chars"}
RECIPE_KEYS = {"name", "seed", "defaults", "sources", "description"}
SAMPLING = re.compile(r"^(first|end|random):(\d+)(%?)$")
CHECKS_SQL = SQL_DIR / "checks.sql"
# Removal reasons in decision order; NULL means selected.
REMOVAL_REASONS = ("checks", "dedup_exact", "near_dup", "where", "sampling")


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

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def as_dict(self) -> dict:
        """The normalised recipe (defaults applied), as recorded in manifests."""
        return {
            "name": self.name, "seed": self.seed, "max_text_chars": self.max_text_chars,
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
    return Recipe(name, seed, sources, max_chars, text)


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
def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def checks_sql_body() -> str:
    """sql/checks.sql without its header comment and final `;`, to nest as a CTE."""
    lines = CHECKS_SQL.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("--"))
    return "\n".join(lines[start:]).rstrip().rstrip(";")


CHECKED_SAMPLES = "checked_samples"  # the CTE of sql/checks.sql with every samples column + the check results


def checks_sql_ctes() -> str:
    """The CTEs of sql/checks.sql (without `with` and the final select), to splice into a recipe's
    `with` chain: its `checked_samples` CTE is the samples view plus the check columns, so a recipe
    reads the samples once (no second scan, no join on sample_id)."""
    body = checks_sql_body()
    if not body.lower().startswith("with "):
        raise RecipeError(f"{CHECKS_SQL} must be one `with … select` query")
    lines = body[len("with "):].splitlines()
    final = max(i for i, line in enumerate(lines) if line.lower().startswith("select"))  # the unindented last select
    ctes = "\n".join(lines[:final]).rstrip().rstrip(",")
    if not re.search(rf"^{CHECKED_SAMPLES} as \(", ctes, re.M):
        raise RecipeError(f"{CHECKS_SQL} must define the CTE `{CHECKED_SAMPLES}` (samples + check columns)")
    return ctes


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
    ctes = [f"-- sql/checks.sql\n{checks_sql_ctes()}"]
    with_tags = any(_mentions_tags(s.where) for s in recipe.sources)  # the tags join only when used
    if with_tags:
        ctes.append(SAMPLE_TAGS_CTE)
    ctes.append(recipe_samples_cte(recipe, with_tags))
    if any(s.dedup == "exact" for s in recipe.sources):
        ctes.append(exact_duplicates_cte(tables))
    for k in sorted({s.near_dup_k for s in recipe.sources if s.near_dup_k is not None}):
        ctes.append(near_duplicates_cte(tables, k))
    ctes.extend(decision_ctes(recipe))
    return CompiledRecipe(recipe, "with " + ",\n".join(ctes))


def _mentions_tags(where: str | None) -> bool:
    return bool(where and re.search(r"\btags\b", where))


SAMPLE_TAGS_CTE = """\
sample_tags as (
    -- a sample's tags: the union of its images' RAM++ tags (NULL while any image is untagged)
    select r.sample_id,
           case when bool_and(i.tags is not null) then list_sort(list_distinct(flatten(list(i.tags)))) end as tags
    from (select sample_id, unnest(image_ids) as image_id from samples) r
    left join images i using (image_id)
    group by r.sample_id
)"""


def recipe_samples_cte(recipe: Recipe, with_tags: bool) -> str:
    """Samples of the recipe's sources with the check results (and tags) a `where` may use."""
    names = ", ".join(sql_literal(s.source) for s in recipe.sources)
    tags_col = ",\n           coalesce(t.tags, case when len(s.image_ids) = 0 then [] end) as tags" if with_tags else ""
    tags_join = "\n    left join sample_tags t using (sample_id)" if with_tags else ""
    return f"""\
recipe_samples as (
    -- every samples column + problems, fixes, n_images, n_image_tags, text_chars (sql/checks.sql)
    select s.*{tags_col}
    from {CHECKED_SAMPLES} s{tags_join}
    where s.source in ({names})  -- reads and checks only the recipe's sources
)"""


def exact_duplicates_cte(tables: Mapping[str, Sequence[str]]) -> str:
    """Samples the exact-dedup decision removes: every row of `dup_exact` (sql/dedup_exact.sql,
    materialised by `python -m etl dedup`) is a later duplicate of its `kept_sample_id`."""
    if S.DUP_EXACT not in tables:
        raise RecipeError("the recipe asks for `dedup: exact` but the lake has no `dup_exact` table: "
                          "run `python -m etl dedup` first (or set `dedup: none`)")
    return (f"exact_duplicates as (\n    -- sql/dedup_exact.sql, materialised by `python -m etl dedup`\n"
            f"    select sample_id from {S.DUP_EXACT}\n)")


def near_duplicates_cte(tables: Mapping[str, Sequence[str]], k: int) -> str:
    """Samples the near-duplicate policy (sql/dedup_near.sql) removes at Hamming distance ≤ k."""
    if S.DUP_NEAR not in tables:
        raise RecipeError(f"the recipe asks for `near_dup_k: {k}` but the lake has no `{S.DUP_NEAR}` table: "
                          f"run `python -m etl dedup --near {k}` first (or remove near_dup_k)")
    return (f"near_duplicates_k{k} as (\n    -- sql/dedup_near.sql, materialised by `python -m etl dedup --near {k}`\n"
            f"    select sample_id from {S.DUP_NEAR} where near_k = {k}\n)")


def check_dedup_tables(con, recipe: Recipe, lake=None) -> dict:
    """The dedup runs the recipe relies on ({table: {run_id, near_k}}); a RecipeError when the lake's
    near-duplicate table was computed for another k than the recipe asks (it holds one k at a time)."""
    used: dict[str, dict] = {}
    if any(s.dedup == "exact" for s in recipe.sources):
        runs = [r[0] for r in con.execute(f"select distinct run_id from {S.DUP_EXACT}").fetchall()]
        used[S.DUP_EXACT] = {"run_id": runs[0] if len(runs) == 1 else runs or None}
    wanted = sorted({s.near_dup_k for s in recipe.sources if s.near_dup_k is not None})
    if wanted:
        rows = con.execute(f"select near_k, list(distinct run_id) from {S.DUP_NEAR} group by near_k").fetchall()
        computed = {k: runs for k, runs in rows}
        if not computed and lake is not None:  # an empty result: the k is in the table's metadata
            params = (lake.dataset(S.DUP_NEAR).schema.metadata or {}).get(b"mmlake:params", b"{}")
            near_k = json.loads(params).get("near_k")
            computed = {near_k: []} if near_k is not None else {}
        missing = [k for k in wanted if k not in computed]
        if missing:
            raise RecipeError(f"the recipe asks for near_dup_k {missing} but `{S.DUP_NEAR}` holds near_k "
                              f"{sorted(k for k in computed if k is not None)}: run `python -m etl dedup "
                              f"--near {missing[0]}` first")
        used[S.DUP_NEAR] = {"near_k": wanted, "run_id": sorted({r for k in wanted for r in computed[k]}) or None}
    return used


# The number of samples the filters kept in the source (on its kept rows; removed rows never use it).
# Not `count(*) FILTER (WHERE …) OVER ()`: DuckDB 2.0 counts a filtered window frame row by row for
# every row, quadratic in the source (a 950k-row source took ~190 s; duckdb/duckdb#25935). Counting
# over the row_number's own partition reads each partition once and shares its partitioning.
ELIGIBLE_SQL = "count(source_index) over (partition by source_index, removed_by is null)"


def verdict_sql(spec: SourceSpec) -> str:
    """The first filter that removes a sample of this source (NULL: kept), in REMOVAL_REASONS order."""
    reasons = []
    if spec.checks == "pass":
        reasons.append("when len(s.problems) > 0 then 'checks'")
    if spec.dedup == "exact":
        reasons.append("when s.sample_id in (select sample_id from exact_duplicates) then 'dedup_exact'")
    if spec.near_dup_k is not None:
        reasons.append(f"when s.sample_id in (select sample_id from near_duplicates_k{spec.near_dup_k}) then 'near_dup'")
    if spec.where:
        reasons.append(f"when not coalesce(({spec.where}), false) then 'where'")
    if not reasons:
        return "null::varchar"
    return "case\n" + "".join(f"                        {r}\n" for r in reasons) + "                    end"


def decision_ctes(recipe: Recipe) -> list[str]:
    """One pass over recipe_samples for every source (no union of per-source scans: DuckDB would
    materialise the shared scan with every column a consumer reads, conversations included):
    each source's filters in a CASE on `source`, then — only when a source samples — one window
    ranking each source's kept samples in its own order."""
    per_source = lambda values: "".join(f"\n                when {sql_literal(s.source)} then {v}"  # noqa: E731
                                         for s, v in zip(recipe.sources, values))
    comments = "".join(f"\n    -- {s.source}: checks {s.checks}, dedup {s.dedup}, near_dup_k {s.near_dup_k}, "
                       f"where {s.where!r}, sampling {s.sampling}, repeat {s.repeat}" for s in recipe.sources)
    filtered = f"""recipe_filtered as ({comments}
    select case s.source{per_source(range(len(recipe.sources)))} end as source_index,
           case s.source{per_source(s.repeat for s in recipe.sources)} end as repeat,
           s.*,
           case s.source{per_source(verdict_sql(s) for s in recipe.sources)} end as removed_by
    from recipe_samples s
)"""
    sampled = [(i, s) for i, s in enumerate(recipe.sources) if s.sampling.strategy != "all"]
    if not sampled:  # nothing to rank: no sort of the sources
        return [filtered, "decisions as (\n    select * from recipe_filtered\n)"]
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
        filtered,
        f"""recipe_ranked as (
    -- sampling: rank the samples the filters kept, per source, in its order
    select *,
           row_number() over (partition by source_index, removed_by is null order by {order}) as pick_rank,
           {ELIGIBLE_SQL} as eligible
    from recipe_filtered
)""",
        f"""decisions as (
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
