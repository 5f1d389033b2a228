"""Where ``ptuning serve`` reads its admin token: the environment variable PTUNING_ADMIN_TOKEN or the first line of
``--admin-token-file`` (a warning when other users may read the file), never the command line; a token given twice,
empty or unreadable stops the start with a clear error. (Its use over HTTP: test_openapi_contract.py, test_serve.py.)"""

from __future__ import annotations

import logging

import pytest

from ptuning.errors import PtuningError
from ptuning.serving.config import ServeConfig

VARIABLE = "PTUNING_ADMIN_TOKEN"


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A --models-dir, and no token in the environment."""
    monkeypatch.delenv(VARIABLE, raising=False)
    folder = tmp_path / "models"
    folder.mkdir()
    return str(folder)


def token_file(tmp_path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_the_token_comes_from_the_environment(models, monkeypatch):
    monkeypatch.setenv(VARIABLE, "from-env")
    assert ServeConfig(models_dir=models).admin_token == "from-env"


def test_the_token_is_the_first_line_of_the_file(models, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ptuning"):
        config = ServeConfig(models_dir=models, admin_token_file=token_file(tmp_path, "s3cret \nsecond line\n"))
    assert config.admin_token == "s3cret" and not caplog.records  # only its owner may read it: no warning


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_token_file_others_may_read_is_warned_of(models, tmp_path, caplog, mode):
    path = token_file(tmp_path, "s3cret\n", mode)
    with caplog.at_level(logging.WARNING, logger="ptuning"):
        assert ServeConfig(models_dir=models, admin_token_file=path).admin_token == "s3cret"
    assert f"--admin-token-file {path} may be read by other users of this machine: chmod 600 it" in caplog.text


def test_no_token_anywhere_leaves_runtime_loading_off(monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    assert ServeConfig().admin_token is None


def test_a_token_given_in_code_is_kept(models, monkeypatch):
    monkeypatch.setenv(VARIABLE, "from-env")
    assert ServeConfig(models_dir=models, admin_token="in-code").admin_token == "in-code"


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("from-env", "from-file\n", "the admin token is given twice (PTUNING_ADMIN_TOKEN and --admin-token-file)"),
        (None, "", "the admin token (PTUNING_ADMIN_TOKEN or --admin-token-file) is empty"),
        (None, "  \nsecond line\n", "is empty"),
        ("", None, "the admin token (PTUNING_ADMIN_TOKEN or --admin-token-file) is empty"),
        (None, b"\xff\xfe", "cannot read it"),
    ],
)
def test_a_token_that_cannot_be_used_is_refused(models, tmp_path, monkeypatch, variable, text, message):
    if variable is not None:
        monkeypatch.setenv(VARIABLE, variable)
    path = None
    if isinstance(text, bytes):
        path = tmp_path / "token"
        path.write_bytes(text)
    elif text is not None:
        path = token_file(tmp_path, text)
    with pytest.raises(PtuningError, match="admin") as refused:
        ServeConfig(models_dir=models, admin_token_file=None if path is None else str(path))
    assert message in str(refused.value)


def test_a_missing_token_file_is_named(models, tmp_path):
    with pytest.raises(PtuningError, match=r"--admin-token-file .*nowhere: cannot read it \(.*No such file"):
        ServeConfig(models_dir=models, admin_token_file=str(tmp_path / "nowhere"))


def test_the_command_line_refuses_the_token_itself(models, capsys):
    from ptuning.cli import main

    assert main(["serve", models, "--admin-token", "s3cret", "--models-dir", models]) == 2
    error = capsys.readouterr().err
    assert "--admin-token would show the token to every user of this machine" in error
    assert "PTUNING_ADMIN_TOKEN or --admin-token-file PATH" in error and "s3cret" not in error
