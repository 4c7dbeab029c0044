"""agent.redact: SAS signatures, account keys and secret-looking values never shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.redact import MASK, is_secret_name, redact_env_value, redact_text, redact_url

REPO = Path(__file__).resolve().parents[1]

SAS = ("https://acct.blob.core.windows.net/container/dir/blob.txt?sv=2023-11-03&ss=b&srt=co&sp=rl"
       "&se=2026-01-01T00%3A00%3A00Z&st=2025-01-01T00%3A00%3A00Z&spr=https&sig=AbC%2Bd%2Fe%3D")

URLS: list[tuple[str, str, list[str], list[str]]] = [
    # (id, url, must contain, must not contain)
    ("sas", SAS, ["sig=REDACTED", "se=2026-01-01T00:00:00Z", "sp=rl", "sv=2023-11-03",
                  "https://acct.blob.core.windows.net/container/dir/blob.txt?"], ["AbC", "%2Bd"]),
    ("sig-upper", "https://a/b?SIG=secretvalue&se=x", ["SIG=REDACTED", "se=x"], ["secretvalue"]),
    ("signature", "https://a/b?signature=secretvalue", ["signature=REDACTED"], ["secretvalue"]),
    ("user-delegation", "https://a/c?skoid=oid1&sktid=tid1&skt=t&ske=e&sks=b&skv=v&sig=s1",
     ["skoid=REDACTED", "sktid=REDACTED"], ["oid1", "tid1", "=s1"]),
    ("token-params", "https://a/b?token=t0k3n&access_token=at0k&code=c0d3&key=k3y&password=pw0rd&secret=s3cr",
     ["token=REDACTED"], ["t0k3n", "at0k", "c0d3", "k3y", "pw0rd", "s3cr"]),
    ("userinfo-password", "https://user:hunter2@host/path", ["https://user:REDACTED@host/path"], ["hunter2"]),
    ("postgres-userinfo", "postgres://app:s3cr3t@db.example:5432/prod?sslmode=require",
     ["postgres://app:REDACTED@db.example:5432/prod?sslmode=require"], ["s3cr3t"]),
    ("at-in-password", "https://u:p@ss@host/x", ["https://u:REDACTED@host/x"], ["p@ss"]),
    ("encoded-password", "https://u:p%40ss%3Aw@host/", ["https://u:REDACTED@host/"], ["p%40ss"]),
    ("password-and-sas", "https://u:pw9@a/b?sig=zz9", ["u:REDACTED@", "sig=REDACTED"], ["pw9", "zz9"]),
    ("repeated-sig", "https://a/b?sig=one&sig=two", ["sig=REDACTED&sig=REDACTED"], ["one", "two"]),
    ("blank-sig", "https://a/b?sig=&sv=1", ["sig=REDACTED", "sv=1"], []),
    ("raw-plus-sig", "https://a/b?sv=1&sig=ab+cd/ef==", ["sig=REDACTED"], ["ab+cd", "ab cd", "ab%2Bcd"]),
    ("fragment-kept", "https://a/b?sig=x1y2#frag", ["#frag", "sig=REDACTED"], ["x1y2"]),
]


@pytest.mark.parametrize(("url", "present", "absent"), [u[1:] for u in URLS], ids=[u[0] for u in URLS])
def test_redact_url(url: str, present: list[str], absent: list[str]) -> None:
    out = redact_url(url)
    for fragment in present:
        assert fragment in out, out
    for fragment in absent:
        assert fragment not in out, out


@pytest.mark.parametrize("url", [
    "https://example.com/in.txt", "https://example.com/in.txt?sv=1&sp=r", "http://127.0.0.1:10000/x",
    "autoc", "",
], ids=["plain", "no-secret-query", "local", "not-a-url", "empty"])
def test_redact_url_keeps_non_secret_urls(url: str) -> None:
    out = redact_url(url)
    assert MASK not in out
    assert unquote(out) == unquote(url)


def test_redact_url_of_corpus_placeholder_sas() -> None:
    # the corpus' "?sas" placeholder carries no secret: nothing is masked
    assert MASK not in redact_url("https://a/b?sas") and redact_url("https://a/b?sas").startswith("https://a/b?sas")


def test_redact_url_of_unparseable_url_still_masks() -> None:
    out = redact_url("http://[broken/x?sig=zzsecretzz")
    assert "zzsecretzz" not in out and "sig=REDACTED" in out


TEXTS: list[tuple[str, str, str]] = [
    ("sig-in-message", f"download of {SAS} failed: 403", "AbC%2Bd%2Fe%3D"),
    ("account-key", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9vYmFy+/==;EndpointSuffix=x",
     "Zm9vYmFy"),
    ("shared-access-signature", "BlobEndpoint=https://a/;SharedAccessSignature=sv=1&sig=Q1w2E3",
     "Q1w2E3"),
    ("quoted", 'url="https://a/b?sig=inquotes" other', "inquotes"),
    ("signature", "x-ms-signature signature=deadbeef", "deadbeef"),
    ("userinfo", "connect postgres://user:pa55word@db:5432/x failed", "pa55word"),
    ("userinfo-upper-scheme", "HTTPS://u:Pa55@h/", "Pa55"),
    ("userinfo-in-quotes", 'dsn="mysql+pymysql://root:tops3cret@127.0.0.1/db"', "tops3cret"),
    ("userinfo-at-in-password", "redis://:pw@x@cache:6379/0", "pw@x"),
    ("two-urls", "a=ftp://u:one1@h1/x b=amqp://u:two2@h2", "two2"),
    ("two-urls-first", "a=ftp://u:one1@h1/x b=amqp://u:two2@h2", "one1"),
]


@pytest.mark.parametrize(("text", "secret"), [t[1:] for t in TEXTS], ids=[t[0] for t in TEXTS])
def test_redact_text(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out and MASK in out


USERINFO_KEPT: list[tuple[str, str]] = [
    # (text, shown as): the account, host, port and path stay readable
    ("postgres://user:password@host/db", "postgres://user:REDACTED@host/db"),
    ("DATABASE_URL=postgres://user:password@host", "DATABASE_URL=postgres://user:REDACTED@host"),
    ("ssh://git@github.com:22/x.git", "ssh://git@github.com:22/x.git"),
    ("https://host:8443/a@b", "https://host:8443/a@b"),
    ("https://user:@host/", "https://user:@host/"),
    ("mailto:someone@example.com", "mailto:someone@example.com"),
    ("user:pass@host without a scheme", "user:pass@host without a scheme"),
]


@pytest.mark.parametrize(("text", "shown"), USERINFO_KEPT)
def test_redact_text_userinfo(text: str, shown: str) -> None:
    assert redact_text(text) == shown


@pytest.mark.parametrize("name", ["DATABASE_URL", "DB_DSN", "BROKER", "INPUT"])
def test_env_value_with_userinfo_password_is_masked(name: str) -> None:
    assert redact_env_value(name, "postgres://user:password@host") == "postgres://user:REDACTED@host"


def test_redact_text_keeps_the_rest() -> None:
    out = redact_text(f"GET {SAS} -> 403 AuthenticationFailed")
    assert out.startswith("GET https://acct.blob.core.windows.net/container/dir/blob.txt?sv=2023-11-03")
    assert out.endswith(" -> 403 AuthenticationFailed") and "se=2026-01-01T00%3A00%3A00Z" in out
    assert redact_text("nothing secret here: design=x") == "nothing secret here: design=x"


@pytest.mark.parametrize("name", [
    "PASSWORD", "DB_PASSWORD", "my_passwd", "CLIENT_SECRET", "AZ_BATCH_AUTHENTICATION_TOKEN",
    "AZ_BATCH_SOFTWARE_ENTITLEMENT_TOKEN", "KEY", "API_KEY", "KEY_VAULT_NAME", "STORAGE_ACCOUNTKEY",
    "AccountKey", "AZURE_STORAGE_SAS", "SAS_TOKEN", "AZURE_CREDENTIALS", "CONNECTION_STRING",
    "AZURE_STORAGE_CONNECTIONSTRING", "CONNSTR", "AUTH_HEADER", "x-ms-auth", "github_token",
    "APIKEY", "OPENAI_APIKEY", "apiKey", "storageKey", "STORAGEKEY", "PRIVATEKEY", "SSHKEY", "ACCESSKEYS",
    "SUBSCRIPTIONKEY", "DB_PASS", "PASS", "GPG_PASSPHRASE", "DB_PWD", "GITHUB_PAT", "SESSION_COOKIE",
])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)
    assert redact_env_value(name, "hunter2") == MASK
    assert redact_env_value(name, "") == ""  # an empty value reveals nothing


@pytest.mark.parametrize("name", [
    "PATH", "HOME", "USER", "AZ_BATCH_TASK_DIR", "AZ_BATCH_NODE_ID", "AZ_BATCH_ACCOUNT_URL", "FOO",
    "KEYBOARD",
    "MONKEY", "TURKEY", "JOBVAR", "LANG", "PWD", "OLDPWD", "PASSTHROUGH", "COMPASS", "PATH_INFO", "PATTERN",
    "KEYBOARD_LAYOUT", "HOCKEY", "WHISKEY", "monkey", "Turkey", "PATIENT_ID",
])
def test_non_secret_names(name: str) -> None:
    assert not is_secret_name(name)
    assert redact_env_value(name, "/usr/bin:/bin") == "/usr/bin:/bin"


def test_non_secret_name_with_a_sas_value_is_still_redacted() -> None:
    out = redact_env_value("INPUT_URL", SAS)
    assert "AbC%2Bd%2Fe%3D" not in out and "sig=REDACTED" in out


BASE64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=16,
                 max_size=88)


@settings(max_examples=300, deadline=None)
@given(sig=BASE64, encode=st.booleans(), position=st.integers(0, 2))
def test_redact_url_never_leaks_the_signature(sig: str, encode: bool, position: int) -> None:
    value = quote(sig, safe="") if encode else sig
    params = ["sv=2023-11-03", "sp=r", "se=2026-01-01T00%3A00%3A00Z"]
    params.insert(position, f"sig={value}")
    url = "https://acct.blob.core.windows.net/c/blob?" + "&".join(params)
    for out in (redact_url(url), redact_text(url), redact_text(f"error: {url} failed")):
        assert sig not in out and value not in out and quote(sig, safe="") not in out
        assert sig.replace("+", " ") not in out
    assert "se=2026-01-01T00:00:00Z" in redact_url(url)


@settings(max_examples=200, deadline=None)
@given(key=BASE64)
def test_redact_text_never_leaks_an_account_key(key: str) -> None:
    text = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
    assert key not in redact_text(text)


PASSWORD = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc", "Zs", "Zl", "Zp"],
                                          blacklist_characters="/?#@"), min_size=4, max_size=30)


@settings(max_examples=300, deadline=None)
@given(password=PASSWORD, scheme=st.sampled_from(["postgres", "https", "mongodb+srv", "amqp"]))
def test_userinfo_password_never_leaks(password: str, scheme: str) -> None:
    password = f"Zq{password}"                  # never a piece of the rest of the URL
    url = f"{scheme}://user:{password}@host.example:1234/db?x=1"
    for out in (redact_url(url), redact_text(url), redact_text(f"error: {url} failed"),
                redact_env_value("DSN", url)):
        assert password not in out and "user:REDACTED@host.example:1234/db" in out


def test_plan_masks_userinfo_passwords_end_to_end(tmp_path: Path) -> None:
    """``python -m agent plan`` (text and JSON) on a task with a DSN in its environment and a
    resource file URL with userinfo: the passwords appear nowhere, the rest does."""
    task = {"id": "dsn", "commandLine": "true",
            "environmentSettings": [{"name": "DATABASE_URL", "value": "postgres://app:Pg5ecret@db:5432/x"}],
            "resourceFiles": [{"httpUrl": "https://fetch:Ht7ppw@files.example/in.txt", "filePath": "in.txt"}]}
    path = tmp_path / "dsn.json"
    path.write_text(json.dumps(task))
    for extra in ((), ("--output", "json")):
        proc = subprocess.run([sys.executable, "-m", "agent", "plan", str(path), "--root", str(tmp_path / "root"),
                               "--config", "/dev/null", *extra], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 0, proc.stderr
        shown = proc.stdout + proc.stderr
        assert "Pg5ecret" not in shown and "Ht7ppw" not in shown
        assert "postgres://app:REDACTED@db:5432/x" in shown and "https://fetch:REDACTED@files.example/in.txt" in shown
