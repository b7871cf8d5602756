"""atheris: the request path normalizer (python fuzz/fuzz_path_normalizer.py)."""

import sys

import atheris

with atheris.instrument_imports():
    from fuzz.targets import check_path


def test_one_input(data: bytes) -> None:
    check_path(data.decode("latin-1"))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
