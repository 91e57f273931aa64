"""Validates JSON documents (one per line on stdin) against a JSON Schema file (argv[1]).

Prints "ok" or the first error of each failing document, and exits 1 if any failed."""

import json
import sys

import jsonschema

schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
failed = False
for line in sys.stdin:
    if not line.strip():
        continue
    errors = sorted(validator.iter_errors(json.loads(line)), key=lambda e: list(e.path))
    if errors:
        failed = True
        print(f"{list(errors[0].path)}: {errors[0].message}")
    else:
        print("ok")
sys.exit(1 if failed else 0)
