"""scikit-learn: estimators saved with joblib, pickle or skops."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moorage.runtimes.frameworks.base import Framework, ModelLoadError, format_traceback

SKOPS_TRUSTED_ENV = "MOORAGE_SKOPS_TRUSTED_TYPES"

# skops refuses to build any type it was not told to trust. These packages are what a scikit-learn model
# is made of, and the user already chose to run them; anything else (their own classes, other libraries)
# must be named explicitly, because trusting it means running its code at load time.
_SKOPS_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


class SklearnFramework(Framework):
    """scikit-learn estimators saved with joblib, pickle or skops."""

    name = "sklearn"
    model_files = ("model.joblib", "model.pkl", "model.pickle", "model.skops")
    model_suffixes = (".joblib", ".pkl", ".pickle", ".skops")

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        path = self.find_model_file(Path(model_dir))
        env = os.environ if env is None else env
        try:
            if path.suffix == ".skops":
                return _load_skops(path, env)
            return _load_pickled(path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load {path.name}: {type(exc).__name__}: {exc}", traceback=format_traceback()
            ) from exc

def _load_pickled(path: Path) -> Any:
    # joblib.load reads plain pickles too, and users often joblib.dump() into a file named model.pkl:
    # pickle.load would then return joblib's array placeholders instead of failing, so prefer joblib.
    try:
        import joblib
    except ImportError:
        with path.open("rb") as handle:
            return pickle.load(handle)
    return joblib.load(path)


def _load_skops(path: Path, env: Mapping[str, str]) -> Any:
    import skops.io

    extra = {name.strip() for name in env.get(SKOPS_TRUSTED_ENV, "").split(",") if name.strip()}
    untrusted = skops.io.get_untrusted_types(file=path)
    refused = [name for name in untrusted if not name.startswith(_SKOPS_TRUSTED_PREFIXES) and name not in extra]
    if refused:
        raise ModelLoadError(
            f"{path.name} contains types that are not trusted: {', '.join(refused)}. If you trust them, "
            f"list them (comma-separated) in the {SKOPS_TRUSTED_ENV} environment variable"
        )
    return skops.io.load(path, trusted=untrusted)
