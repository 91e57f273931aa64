"""Checks ONNX files written by vigil against ONNX's own tooling, independent of both engines.

For every CASE.onnx in the folder given, with CASE.json beside it holding the inputs and
what tract and ONNX Runtime computed, this runs onnx.checker.check_model(full_check=True)
and onnx.reference.ReferenceEvaluator, and prints one JSON object: per case, the checker's
verdict and the largest absolute difference of each engine's outputs from the reference.
"""

import json
import pathlib
import sys
import traceback

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator


def array(entry):
    return np.asarray(entry["data"], dtype=np.float32).reshape(entry["shape"])


def check_case(model_path: pathlib.Path) -> dict:
    result = {}
    case = json.loads(model_path.with_suffix(".json").read_text())
    model = onnx.load(str(model_path))
    try:
        onnx.checker.check_model(model, full_check=True)
        result["checker"] = "ok"
    except Exception as e:  # the verdict is data for the Rust test to report
        result["checker"] = f"{type(e).__name__}: {e}"
    feeds = {name: array(v) for name, v in case["inputs"].items()}
    try:
        evaluator = ReferenceEvaluator(model)
        names = [o.name for o in model.graph.output]
        reference = dict(zip(names, evaluator.run(None, feeds)))
    except Exception:
        result["reference_error"] = traceback.format_exc(limit=3)
        return result
    diffs = {}
    for engine, outputs in case["outputs"].items():
        worst = 0.0
        for name, entry in outputs.items():
            got = array(entry)
            want = np.asarray(reference[name], dtype=np.float32)
            if got.shape != want.shape:
                result.setdefault("shape_errors", []).append(
                    f"{engine} {name}: {list(got.shape)} vs reference {list(want.shape)}"
                )
                continue
            d = float(np.max(np.abs(got - want))) if got.size else 0.0
            result.setdefault("per_output", {})[f"{engine}:{name}"] = {
                "max_abs_diff": d,
                "reference_max_abs": float(np.max(np.abs(want))) if want.size else 0.0,
            }
            worst = max(worst, d)
        diffs[engine] = worst
    result["max_abs_diff"] = diffs
    return result


def main() -> int:
    folder = pathlib.Path(sys.argv[1])
    report = {p.stem: check_case(p) for p in sorted(folder.glob("*.onnx"))}
    json.dump({"cases": report}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
