"""Drive the Prefect 3 web UI like a person: start a custom training-pipeline run.

Used by the stack tests with a Playwright ``Page`` (sync API). The UI is the
default (Vue, "V1") Prefect UI served by ``prefect server start``. Quirks it
copes with:

* the deployments list shows two links named ``training-pipeline`` (the
  deployment and its flow), so the deployment one is picked by its href;
* "Custom run" in the Run menu is a link to ``.../run?parameters=...``;
* each pydantic section (``train`` ...) renders already expanded as an
  any-of ``TrainConfig | None`` property; field labels read ``Epochs
  (Optional)`` and are not bound to their inputs, so ``get_by_label`` finds
  nothing and fields are found by their label text inside the section;
* ``model`` is a union of every family's config, drawn as one toggle button
  per family (titled by the family's name) above the chosen family's fields;
  a click on another family swaps in that family's fields at their defaults;
* the page scrolls inside ``.app-router-view``, not the document, so a
  full-page screenshot needs a viewport as tall as that element;
* after Submit the UI returns to the deployment page and shows a 5 s toast
  with a "View run" button, which leads to ``/runs/flow-run/<id>``; the
  toast app is mounted twice (two stacked copies), so the last is clicked,
  and the run's name in the Runs tab is the fallback.
"""

from __future__ import annotations

import re
from os import PathLike

from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

DEPLOYMENT = "training-pipeline"
TIMEOUT_MS = 30_000
_FLOW_RUN_URL = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")


def _section(page: Page, within, name: str):
    """The form property whose label starts with `name` (a section or a field)."""
    return within.locator(".schema-form-property").filter(
        has=page.get_by_text(re.compile(rf"^{re.escape(name)}\b"))
    ).first


def _fill_number(page: Page, section, label: str, value: int) -> None:
    field = _section(page, section, label).get_by_role("spinbutton")
    field.fill(str(value))
    if field.input_value() != str(value):
        raise AssertionError(f"{label} input reads {field.input_value()!r}, not {value}")


def log_in(page: Page, auth_string: str) -> None:
    """The UI's login page (shown when the API asks for an auth string): the string in its one password box,
    then Login; the UI goes on to the page first asked for."""
    box = page.get_by_placeholder("admin:pass")
    box.wait_for()
    box.fill(auth_string)
    page.get_by_role("button", name="Login").click()
    box.wait_for(state="detached")


def custom_run_from_ui(
    page: Page, base_url: str, epochs: int, screenshot_path: str | PathLike[str],
    family: str | None = None, family_fields: dict[str, int] | None = None, auth_string: str | None = None,
) -> str:
    """In the Prefect UI: open the training-pipeline deployment, choose Run ->
    Custom run, pick the model `family` and set its number fields
    `family_fields` (labels as the form shows them, e.g. {"Hidden": 64}), set
    train.epochs to `epochs`, take a full-page screenshot of the filled form to
    screenshot_path, submit, and return the new flow run's id (from the URL the
    UI navigates to). With `auth_string`, logs in first on the UI's login page."""
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{base_url.rstrip('/')}/deployments")
    if auth_string is not None:
        log_in(page, auth_string)

    # Deployments list: the deployment's name link (not the flow's same-named link).
    page.get_by_role("link", name=DEPLOYMENT, exact=True).and_(
        page.locator("[href*='/deployments/deployment/']")
    ).click()
    page.wait_for_url("**/deployments/deployment/*")

    # Deployment page header: the "Run" button opens a menu: Quick run / Custom run.
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("link", name="Custom run").click()
    page.wait_for_url("**/run?**")

    # Parameter form: the `model` section's family toggle, then that family's own fields.
    if family:
        model = _section(page, page, "model")
        model.get_by_role("button", name=family, exact=True).click()
        for label, value in (family_fields or {}).items():
            _fill_number(page, model, label, value)
    # The `train` section, then its `Epochs` field (a number input).
    _fill_number(page, _section(page, page, "train"), "Epochs", epochs)

    # Screenshot the whole filled form: grow the viewport to the scrolling view's height.
    viewport = page.viewport_size or {"width": 1400, "height": 1000}
    height = page.evaluate("document.querySelector('.app-router-view').scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
    page.screenshot(path=str(screenshot_path), full_page=True)
    page.set_viewport_size(viewport)

    # Form top: the prefilled "Run Name" text box; the name finds the run after submitting.
    run_name = (
        page.locator(".p-label")
        .filter(has=page.get_by_text("Run Name", exact=True))
        .get_by_role("textbox")
        .input_value()
    )
    # Form footer: "Submit" (validates the parameters on the server, then creates the run).
    page.get_by_role("button", name="Submit", exact=True).click()

    # Success toast (shown ~5 s) on the deployment page: "<run name> scheduled to start
    # now" + "View run". The toast app is mounted twice; the last copy is the clickable one.
    # Should the toast be gone, the run's name links to it from the deployment's Runs tab.
    page.wait_for_url("**/deployments/deployment/*")
    toast = page.locator(".toast-flow-run-create").filter(has_text=run_name).last
    try:
        toast.get_by_role("button", name="View run").click(timeout=5_000)
    except PlaywrightTimeoutError:
        page.get_by_role("link", name=run_name, exact=True).first.click()
    page.wait_for_url(_FLOW_RUN_URL)
    match = _FLOW_RUN_URL.search(page.url)
    assert match is not None
    return match.group(1)
