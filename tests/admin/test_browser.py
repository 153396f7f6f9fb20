"""The onboarding flow in a real browser (Debian's headless Chromium driven by Playwright),
from a fresh node to "Onboarding Completed" against a relay running as its own process over TLS
with a private CA; then disable push, offboard and onboard again. Screenshots go to the test's
tmp dir and to ``test-artifacts/`` (git-ignored; ``$UCPUSH_TEST_ARTIFACTS`` overrides)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from ucpush.admin.app import RunningAdmin, run_admin
from ucpush.config import AdminSettings, CloudSettings, Settings
from ucpush.signin.service import DeviceRegistration, SigninService
from ucpush.store import open_store
from ucpush.store.repository import Platform

playwright = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
UCPUSH = [sys.executable, "-m", "ucpush"]
ARTIFACTS = Path(
    os.environ.get("UCPUSH_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


@dataclass
class RelayProcess:
    url: str
    ca_pem: str
    config: Path

    def voucher(self) -> str:
        done = subprocess.run(
            [
                *UCPUSH,
                "--config",
                str(self.config),
                "relay",
                "voucher",
                "create",
                "--tenant",
                "acme",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        code = re.search(r"^([A-Z2-7]{4}(?:-[A-Z2-7]{4}){5})$", done.stdout, re.M)
        assert code, done.stdout
        return code.group(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[RelayProcess]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "relay.pem", tmp_path / "relay.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = _free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "relay"}"\n[relay]\nport = {port}\n'
        f'tls_cert = "{cert_file}"\ntls_key = "{key_file}"\n'
    )
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*UCPUSH, "--config", str(config), "relay", "serve"], stdout=out, stderr=out
        )
    url = f"https://127.0.0.1:{port}"
    ca_pem = ca.cert_pem.bytes().decode()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with httpx.Client(verify=False, timeout=1) as probe:  # only: is it up yet?
                    if probe.get(f"{url}/healthz").status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield RelayProcess(url, ca_pem, config)
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture
async def fresh_node(tmp_path: Path) -> AsyncIterator[RunningAdmin]:
    settings = Settings(
        data_dir=tmp_path / "node",
        admin=AdminSettings(port=0),
        cloud=CloudSettings(reload_seconds=3600),
    )
    async with await open_store(settings.store_url) as store:
        signin = SigninService.from_settings(settings, store.signin)
        async with run_admin(settings, store, signin) as admin:
            yield admin


async def test_onboarding_in_a_browser(
    relay_process: RelayProcess, fresh_node: RunningAdmin, tmp_path: Path
):
    username, password = (fresh_node.initial_password_file or Path()).read_text().split()
    shots = tmp_path / "screenshots"
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 1600})
            page.set_default_timeout(15000)
            await page.goto(f"{fresh_node.url}/")
            assert "/login" in page.url
            await page.fill("input[name=username]", username)
            await page.fill("input[name=password]", "not the password")
            await page.click("button:has-text('Sign in')")
            assert "wrong user name or password" in await page.inner_text("[role=alert]")
            await page.fill("input[name=username]", username)
            await page.fill("input[name=password]", password)
            await page.click("button:has-text('Sign in')")
            await page.wait_for_url("**/onboarding")
            status = page.locator("#status-line")
            assert await status.inner_text() == "Status: Onboarding Pending"
            cluster_id = await page.inner_text("#cluster-id")
            assert cluster_id == fresh_node.cloud.cluster_id

            # The relay's certificate comes from a private CA: not trusted yet.
            reach = page.locator("#reach")
            await reach.locator("input[name=relay_url]").fill(relay_process.url)
            await page.click("button:has-text('Check reachability and certificate')")
            assert "NOT trusted" in await page.inner_text("#reachability")
            await page.fill("textarea[name=ca_bundle]", relay_process.ca_pem)
            await page.click("button:has-text('Save CA certificates')")
            assert "CA certificate settings saved" in await page.inner_text("[role=status]")
            await reach.locator("input[name=relay_url]").fill(relay_process.url)
            await page.click("button:has-text('Check reachability and certificate')")
            result = await page.inner_text("#reachability")
            assert "reachable" in result and "NOT" not in result and "trusted" in result

            onboard = page.locator("#onboard")
            await onboard.locator("input[name=relay_url]").fill(relay_process.url)
            await onboard.locator("input[name=voucher]").fill("AAAA-BBBB-CCCC-DDDD-EEEE-FFFF")
            await page.click("button:has-text('Enable Push Notifications')")
            assert "voucher" in (await page.inner_text("[role=alert]")).lower()
            await onboard.locator("input[name=voucher]").fill(relay_process.voucher())
            await page.click("button:has-text('Enable Push Notifications')")
            await page.wait_for_url("**/onboarding?done=enroll")
            assert await status.inner_text() == "Status: Onboarding Completed"
            shots.mkdir()
            await page.screenshot(path=str(shots / "onboarding-completed.png"), full_page=True)
            assert fresh_node.cloud.current_client() is not None

            await page.click("button:has-text('Disable Push Notifications')")
            assert "Push notifications disabled" in await page.inner_text("[role=status]")
            assert fresh_node.cloud.current_client() is None
            await page.click("button:has-text('Offboard (re-onboard with a new voucher)')")
            assert await status.inner_text() == "Status: Onboarding Pending"
            await onboard.locator("input[name=voucher]").fill(relay_process.voucher())
            await page.click("button:has-text('Enable Push Notifications')")
            assert await status.inner_text() == "Status: Onboarding Completed"
            await page.screenshot(path=str(shots / "re-onboarded.png"), full_page=True)
        finally:
            await browser.close()
    assert (await fresh_node.cloud.verify()).label == "Onboarding Completed"
    _keep_artifacts(shots)


def _keep_artifacts(shots: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for shot in shots.iterdir():
        shutil.copy(shot, ARTIFACTS / f"admin-{shot.name}")


async def test_ssid_provisioning_and_devices_in_a_browser(fresh_node: RunningAdmin, tmp_path: Path):
    username, password = (fresh_node.initial_password_file or Path()).read_text().split()
    ctx = fresh_node.context
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(15000)
            await page.goto(f"{fresh_node.url}/users")
            await page.fill("input[name=username]", username)
            await page.fill("input[name=password]", password)
            await page.click("button:has-text('Sign in')")
            await page.wait_for_url("**/users")  # back where the sign-in started

            await page.click("a:has-text('UC Services')")
            await page.fill("input[name=name]", "ward-4")
            await page.fill("input[name=ssids]", "Ward4;Ward 4")
            await page.click("button:has-text('Add or update UC service')")
            assert "letters and digits" in await page.inner_text("[role=alert]")
            await page.fill("input[name=name]", "ward-4")
            await page.fill("input[name=ssids]", "Ward4;Ward5")
            await page.click("button:has-text('Add or update UC service')")
            assert "Ward4;Ward5" in await page.inner_text("table")
            await page.click("a:has-text('Service Profiles')")
            await page.fill("input[name=name]", "nurses")
            await page.fill("input[name=ucservices]", "ward-4")
            await page.click("button:has-text('Add service profile')")
            await page.click("a:has-text('End Users')")
            add = page.locator("section", has_text="Add end user")
            await add.locator("input[name=username]").fill("carol")
            await add.locator("input[name=password]").fill("pw-carol-12")
            await add.locator("input[name=profile]").fill("nurses")
            await page.click("button:has-text('Add end user')")
            assert "nurses" in await page.inner_text("table")

            carol = await ctx.store.signin.get_user_by_name("carol")
            await ctx.signin.register_device(
                carol,
                "iphone-7",
                DeviceRegistration(Platform.IOS, "APNS", "cd" * 32, bytes(32), "k"),
            )
            await page.click("a:has-text('Devices')")
            row = await page.inner_text("tbody tr")
            assert "carol" in row and "iphone-7" in row and "active" in row
            shots = tmp_path / "screenshots"
            shots.mkdir()
            await page.screenshot(path=str(shots / "devices.png"), full_page=True)
        finally:
            await browser.close()
    _keep_artifacts(shots)
