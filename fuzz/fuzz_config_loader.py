"""atheris: the YAML config loader and snapshot compiler (python fuzz/fuzz_config_loader.py)."""

import sys

import atheris

with atheris.instrument_imports():
    from fuzz.targets import check_config_text


def test_one_input(data: bytes) -> None:
    check_config_text(data.decode("utf-8", "replace"))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
