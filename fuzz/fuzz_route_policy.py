"""atheris: the route policy compiler on JSON input (python fuzz/fuzz_route_policy.py)."""

import sys

import atheris

with atheris.instrument_imports():
    from fuzz.targets import as_json, check_route_policy


def test_one_input(data: bytes) -> None:
    check_route_policy(as_json(data))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
