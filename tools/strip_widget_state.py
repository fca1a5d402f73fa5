"""Remove saved widget state from notebooks (nbval and GitHub don't need it)."""

import json
import sys

for path in sys.argv[1:]:
    with open(path) as f:
        nb = json.load(f)
    if nb.get("metadata", {}).pop("widgets", None) is not None:
        with open(path, "w") as f:
            json.dump(nb, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"stripped widget state: {path}")
