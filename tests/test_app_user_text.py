"""User text is rendered as text on every screen (issue 16, item 14): a pseudonym, display name or class label
written as Markdown must not become an image (which every viewer's browser would fetch) or a link."""

from __future__ import annotations

import re

import pytest

from pages._common import md
from phenotyping.schemas import Sample, Specimen
from tests.test_app import PASSWORD, app, app_env, lab  # noqa: F401 - fixtures

PSEUDONYM = "![p](http://evil.example/p.png)"
DISPLAY_NAME = "![u](http://evil.example/u.png) <img src=x> :red[Dr]"
# An image or link needs an unescaped "[" and "]", an HTML tag or autolink an unescaped "<"
UNESCAPED = re.compile(r"(?<!\\)[\[\]<]")
_TEXT_KINDS = {"Markdown", "Caption", "Title", "Header", "Subheader", "Toast", "Error", "Warning", "Info", "Success"}


def rendered_markdown(at) -> list[str]:
    """Every string on the screen that Streamlit renders as Markdown: text elements and messages, and the labels,
    help and radio options of widgets, expanders and tabs (input values and selectbox options are plain text)."""
    out = []
    for node in at._tree:
        kind = type(node).__name__
        if kind in _TEXT_KINDS and isinstance(getattr(node, "value", None), str):
            out.append(node.value)
        for attr in ("label", "help"):
            value = getattr(node, attr, None)
            if isinstance(value, str):
                out.append(value)
        if kind == "Radio":
            out.extend(str(o) for o in node.options)
    return out


def test_md_escapes_links_images_html_and_directives():
    escaped = md(DISPLAY_NAME + "\n# heading")
    assert not UNESCAPED.search(escaped) and "\n" not in escaped
    assert "\\:red" in escaped and "\\#" in escaped
    assert escaped.replace("\\", "") == (DISPLAY_NAME + " # heading")  # nothing lost but the line break


@pytest.fixture
def hostile(lab):
    """Sample S2 with a Markdown-image pseudonym and a signer whose display name is Markdown and HTML."""
    from phenotyping.auth import create_user

    store, _ = lab
    store.create_sample(Sample(id="S2", specimen=Specimen.blood, patient_pseudonym=PSEUDONYM), actor="rev")
    create_user(store, "mallory", PASSWORD, "signer", actor="admin", display_name=DISPLAY_NAME)
    return store


@pytest.mark.parametrize("user,page", [("mallory", "samples"), ("mallory", "account"), ("mallory", "report"),
                                       ("mallory", "analyse"), ("admin", "users"), ("admin", "samples")])
def test_item14_markdown_in_a_pseudonym_or_display_name_is_rendered_as_text(hostile, user, page):
    at = app(user)  # the first run draws the navigation and the sidebar, which names the logged-in user
    texts = rendered_markdown(at)
    at.session_state["sample_id"] = "S2"
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    texts += rendered_markdown(at)
    leaking = [t for t in texts if "evil.example" in t and UNESCAPED.search(t)]
    assert not leaking, leaking
    shown = " ".join(texts)
    if user == "mallory":
        assert "evil.example/u.png" in shown
    if page in ("samples", "report", "analyse"):  # the sample header shows the pseudonym
        assert "evil.example/p.png" in shown


def test_signing_errors_on_a_screen_never_name_the_server_key_file(tmp_path):
    """Issue 20 item 9: "cannot open /srv/.../keys/asigner.p12: wrong password" became "cannot open your installed
    signing key: wrong password" on the Report screen."""
    from pages._common import hiding_paths
    from reports.signing import SigningError

    key = tmp_path / "keys" / "asigner.p12"

    def sign(**_):
        raise SigningError(f"cannot open {key}: wrong password, or not a PKCS#12 (.p12/.pfx) file")

    with pytest.raises(ValueError) as caught:
        hiding_paths(sign, {str(key): "your installed signing key"})(key_path=key)
    assert str(key) not in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert "cannot open your installed signing key: wrong password" in str(caught.value)
