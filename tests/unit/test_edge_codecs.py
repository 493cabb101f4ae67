"""The agent's codecs and its key lookup (the same conventions as the runtimes and moorage.credentials)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from moorage.edge import codecs
from moorage.edge.credentials import CredentialsError, find_key


def test_decode_follows_the_container_conventions() -> None:
    assert codecs.decode(b"1,2,3", "text/csv").tolist() == [[1.0, 2.0, 3.0]]
    assert np.isnan(codecs.decode(b"1,2\n3,\n", "text/csv; charset=utf-8")[1, 1])  # an empty cell is missing
    assert codecs.decode(b'a,"b,c"', "text/csv").tolist() == [["a", "b,c"]]
    assert codecs.decode(b'{"instances": [[1, 2]]}', "application/json").tolist() == [[1.0, 2.0]]
    assert codecs.decode(b'{"x": [[1]], "y": [[2]]}', "application/json") == {"x": [[1]], "y": [[2]]}
    assert codecs.decode(b'{"x": 1}\n{"x": 2}\n', "application/jsonlines") == {"x": [1, 2]}
    buffer = io.BytesIO()
    np.save(buffer, np.arange(6).reshape(2, 3))
    assert codecs.decode(buffer.getvalue(), "application/x-npy").shape == (2, 3)
    for body, content_type, status in ((b"1,2\n3", "text/csv", 400), (b"{", "application/json", 400),
                                       (b"[]", "application/json", 400), (b"x", "application/x-npy", 400),
                                       (b"1", "image/png", 415), (b"1", None, 415)):
        with pytest.raises(codecs.CodecError) as caught:
            codecs.decode(body, content_type)
        assert caught.value.status == status


def test_encode_and_accept() -> None:
    assert codecs.encode(np.array([1, 0]), codecs.CSV) == b"1\n0\n"
    assert codecs.encode(np.array([[0.25, 0.75]]), codecs.CSV) == b"0.25,0.75\n"
    assert codecs.encode(np.array([[0.25, 0.75]]), codecs.JSON) == b"[[0.25,0.75]]"
    two = {"label": np.array([1]), "p": np.array([[0.2, 0.8]])}
    assert codecs.encoded_type(two, codecs.CSV) == codecs.JSON
    assert codecs.encode(two, codecs.JSONLINES) == b'{"label":1,"p":[0.2,0.8]}\n'
    assert codecs.choose_accept(None) == codecs.JSON
    assert codecs.choose_accept("text/*;q=0.5, application/x-npy") == codecs.NPY
    assert codecs.choose_accept("text/*") == codecs.CSV
    with pytest.raises(codecs.UnsupportedContentType) as caught:
        codecs.choose_accept("image/png")
    assert caught.value.status == 406


def test_the_key_comes_from_the_environment_then_the_file(tmp_path: Path) -> None:
    file = tmp_path / "edge-credentials"
    file.write_text("[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\nregion = eu-west-1\n"
                    "[other]\naws_access_key_id = OTHER\naws_secret_access_key = othersecret\n")
    env = {"MOORAGE_ACCESS_KEY_ID": "ENVKEY", "MOORAGE_SECRET_ACCESS_KEY": "envsecret"}
    found = find_key(file, env)
    assert found is not None and found.key.access_key_id == "ENVKEY" and found.region == "eu-west-1"
    found = find_key(file, {"MOORAGE_ACCESS_KEY_ID": " "})
    assert found is not None and (found.key.access_key_id, found.source) == ("FILEKEY", str(file))
    assert find_key(file, {}, profile="other").key.secret_access_key == "othersecret"  # type: ignore[union-attr]
    with pytest.raises(CredentialsError, match="set both"):
        find_key(file, {"MOORAGE_ACCESS_KEY_ID": "ENVKEY"})
    with pytest.raises(CredentialsError, match="no such credentials file"):
        find_key(tmp_path / "missing", {})
    half = tmp_path / "half"
    half.write_text("[default]\naws_access_key_id = ONLY\n")
    with pytest.raises(CredentialsError, match="needs both"):
        find_key(half, {})
