"""atheris: the session cookie reader and decoder (python fuzz/fuzz_cookie_decoder.py)."""

import sys

import atheris

with atheris.instrument_imports():
    from fuzz.targets import check_cookie_header, cookie_header_from


def test_one_input(data: bytes) -> None:
    text = data.decode("latin-1")
    check_cookie_header(text)
    check_cookie_header(cookie_header_from(text))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
