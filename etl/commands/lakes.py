"""The lake a command works on, from --lake / $ETL_LAKE / ./lake, checked before any job touches it."""
from __future__ import annotations

import argparse
import os


def open_lake(args: argparse.Namespace, create: bool = False):
    """The lake named by the arguments. Commands that read it (`create=False`) fail in one line on a
    root that is not a lake (missing, a file, a folder without the lake's tables); ingest creates it."""
    from etl import schema as S
    from etl import storage
    from etl.lake import Lake, resolve_lake_uri

    root = resolve_lake_uri(args.lake)
    local = not storage.is_remote(root)
    if local and os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"--lake {root} is a file, not a lake folder")
    lake = Lake.open(root, create=create)  # checks the lake format too (etl/lakeformat.py)
    if not create and not lake.exists(S.SAMPLES):
        what = "does not exist" if local and not os.path.exists(root) else "is not a lake (it has no samples table)"
        raise ValueError(f"--lake {root} {what}; ingest something into it first, or point --lake "
                         "(or $ETL_LAKE) at a lake")
    return lake
