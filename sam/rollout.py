"""`sam rollout`: a challenger model brought into production in steps. Each step is a `serve deploy` of the same
config with the challenger's share raised (or in shadow), held while the ingress's own counters are read
(`sam.traffic`); the first failed check deploys the config as it was (rollback), and after the last step the
challenger becomes `model_dir` (promotion; a `models:/NAME@ALIAS` champion has its alias moved instead).

Talks to the cluster as `serve deploy` does, through the dashboard's REST API, with the cluster's token read
as Ray's own clients read it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token). Its HTTP and YAML
libraries are imported where used: the CLI imports this module for its defaults on every command."""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from sam import SamError
from sam.storage import is_model_uri, is_uri, resolve
from sam.traffic import window

CHALLENGER_KEYS = ("challenger_dir", "challenger_share", "challenger_mode")
DEFAULT_STEPS = "5,25,50,100"
INGRESS = "Sentiment"  # sam.serve.SentimentDeployment's name, where a config's `deployments:` retunes it
TRAFFIC_READS = 8  # `/model` readings per snapshot: each lands on one ingress replica, so several reach them all
TOKEN_HELP = ("the Ray cluster asks for its token (token authentication, on by default since `ray start`): "
              "set RAY_AUTH_TOKEN, or copy the head node's ~/.ray/auth_token to this machine")

Step = Union[str, float]  # "shadow", or the challenger's share in percent


@dataclass
class Checks:
    """What a challenger must show during every step's hold."""

    max_error_rate: float = 0.01
    max_p99_ms: Optional[float] = None
    min_agreement: Optional[float] = None  # judged where shadow requests were compared
    min_requests: int = 10  # fewer answers than this in a hold prove nothing: the step fails


def parse_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    for part in text.split(","):
        part = part.strip()
        if part == "shadow":
            steps.append(part)
            continue
        try:
            share = float(part)
        except ValueError:
            raise SamError(f"--steps: {part!r} is neither a percentage nor 'shadow'") from None
        if not 0 < share <= 100 or (steps and not isinstance(steps[-1], str) and share <= steps[-1]):
            raise SamError(f"--steps {text}: shares rise from above 0 to at most 100")
        steps.append(share)
    return steps


def auth_headers() -> dict:
    """The cluster's token as a bearer header, where this machine has one."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


class ServeCluster:
    """The Serve applications of a cluster, through its dashboard (`serve deploy`'s way in)."""

    def __init__(self, address: str):
        import requests
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
        from ray.exceptions import AuthenticationError

        self.refused = (RuntimeError, AuthenticationError)  # what the client raises for an answer it did not want
        self.address = address
        try:
            self.client = ServeSubmissionClient(address, headers=auth_headers())
        except (ConnectionError, requests.exceptions.ConnectionError):
            raise SamError(f"no Ray dashboard answers at {address} (--address, or RAY_DASHBOARD_ADDRESS)") from None
        except self.refused as error:
            raise SamError(_why(error)) from None

    def deploy(self, config: dict) -> None:
        try:
            self.client.deploy_applications(config)
        except self.refused as error:
            raise SamError(_why(error)) from None

    def application(self, app: str) -> dict:
        """The app's status, message and `deployed_app_config`, as `serve status` shows them ({} if none)."""
        try:
            return self.client.get_serve_details().get("applications", {}).get(app, {})
        except self.refused as error:
            raise SamError(_why(error)) from None


def _why(error: Exception) -> str:
    text = str(error)
    if "Authentication" in text or "401" in text or "403" in text:
        return TOKEN_HELP
    return " ".join(text.split())[:500]


def app_url(config: dict, app: dict) -> str:
    http = config.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{http.get('port', 8000)}{app.get('route_prefix', '/').rstrip('/')}"


def model_readings(url: str, reads: int = TRAFFIC_READS) -> list[dict]:
    """The app's `/model`, read `reads` times: each reading comes from one ingress replica."""
    import requests

    try:
        return [requests.get(f"{url}/model", timeout=30).json() for _ in range(reads)]
    except (requests.RequestException, ValueError) as error:  # ValueError: an answer that is not JSON
        raise SamError(f"no SAM app answers at {url}/model ({type(error).__name__}): deploy it first, or give --url") from None


def by_replica(readings: list[dict]) -> dict[str, dict]:
    """The latest traffic counters of each replica the readings reached."""
    return {info["traffic"]["replica"]: info["traffic"] for info in readings}


class Rollout:
    def __init__(self, config_path: str, challenger: str, address: str, url: Optional[str] = None,
                 app_name: Optional[str] = None, deploy_timeout_s: float = 300, say: Callable[[str], None] = print):
        import yaml

        self.config_path = Path(config_path)
        self.config = yaml.safe_load(self.config_path.read_text())
        apps = self.config.get("applications", [])
        named = [a for a in apps if a.get("name") == app_name] if app_name else [a for a in apps if a.get("import_path") == "serve_app:app"]
        if len(named) != 1:
            raise SamError(f"{config_path}: {'no application named ' + app_name if app_name else 'name the SAM application with --app'}")
        self.app = named[0]
        self.app_name = self.app.get("name", "default")  # Serve's name for an app the config leaves unnamed
        self.base = {k: v for k, v in self.app.get("args", {}).items() if k not in CHALLENGER_KEYS}
        self.challenger = challenger if is_uri(challenger) or is_model_uri(challenger) else resolve(challenger)
        self.cluster, self.url = ServeCluster(address), url or app_url(self.config, self.app)
        self.deploy_timeout_s, self.say = deploy_timeout_s, say

    def _deploy(self, args: dict, applied: Callable[[dict], bool], routing: Optional[dict] = None) -> dict:
        """Deploys the config with this app's `args` (and the ingress's `routing`, as user_config: a change of
        args alone restarts every replica, one of user_config none); returns `/model` once every replica read
        shows `applied`."""
        config = copy.deepcopy(self.config)
        app = config["applications"][self.config["applications"].index(self.app)]
        app["args"] = args
        if routing:
            from sam.serve import ReplicaSettings, ServeArgs

            user_config = ServeArgs.model_validate({**args, **routing}).model_dump(include=set(ReplicaSettings.model_fields))
            deployments = [d for d in app.get("deployments", []) if d.get("name") != INGRESS]
            ingress = next((d for d in app.get("deployments", []) if d.get("name") == INGRESS), {"name": INGRESS})
            app["deployments"] = [*deployments, {**ingress, "user_config": {**ingress.get("user_config", {}), **user_config}}]
        self.cluster.deploy(config)
        deadline = time.monotonic() + self.deploy_timeout_s
        while time.monotonic() < deadline:
            found = self.cluster.application(self.app_name)
            status, message = found.get("status"), found.get("message", "")
            if status == "DEPLOY_FAILED":
                raise SamError(f"the deploy failed: {message.strip().splitlines()[-1] if message.strip() else status}")
            if status == "RUNNING":
                try:
                    readings = model_readings(self.url)
                    if all(applied(info) for info in readings):
                        return readings[-1]
                except (SamError, KeyError):
                    pass  # replicas being replaced
            time.sleep(1)
        raise SamError(f"the deploy did not take effect within {self.deploy_timeout_s:.0f} s (serve status shows why)")

    def run(self, steps: list[Step], hold_s: float, checks: Checks) -> dict:
        deployed = self.cluster.application(self.app_name).get("deployed_app_config") or {}
        if (deployed.get("args") or {}).get("model_dir") != self.base.get("model_dir"):
            raise SamError(f"{self.config_path}: model_dir is {self.base.get('model_dir')}, but the app serves "
                           f"{(deployed.get('args') or {}).get('model_dir')}: deploy the config first, or correct it")
        champion = model_readings(self.url, 1)[0]["model"]
        timeline: list[dict] = []
        for number, step in enumerate(steps, 1):
            mode, share = ("shadow", 0.0) if step == "shadow" else ("split", step / 100)
            routing = {"challenger_share": share, "challenger_mode": mode}
            try:
                info = self._deploy({**self.base, "challenger_dir": self.challenger}, routing=routing,
                                    applied=lambda i: bool(i.get("challenger")) and i["challenger"]["share"] == share
                                    and i["challenger"]["mode"] == mode and i["model"] == champion)
                challenger = info["challenger"]["model"]
                started, before = time.monotonic(), by_replica(model_readings(self.url))
                time.sleep(hold_s)
                after = by_replica(model_readings(self.url))
            except SamError as error:  # a deploy that failed, or an app that stopped answering during the step
                return self._roll_back(champion, timeline, f"step {number} ({_label(step)}): {error}")
            held = time.monotonic() - started
            figures = {"step": _label(step), "held_s": round(held, 1), "challenger": window(before, after, challenger),
                       "champion": window(before, after, champion)}
            figures["requests_per_s"] = round((figures["challenger"]["requests"] * (mode == "split")
                                               + figures["champion"]["requests"]) / held, 1)
            failed = judge(figures["challenger"], checks)
            figures["failed"] = failed
            timeline.append(figures)
            self.say(f"step {number}/{len(steps)} {_label(step)}: {describe(figures)}: {'FAILED ' + failed if failed else 'ok'}")
            if failed:
                return self._roll_back(champion, timeline, f"step {number} ({_label(step)}): {failed}")
        promoted = promoted_args(self.base, self.challenger, self.say)
        info = self._deploy(promoted, lambda i: not i.get("challenger") and i["model"] != champion)
        self.say(f"promoted: {info['model']} serves all traffic")
        if promoted.get("model_dir") != self.base.get("model_dir"):
            name_champion(self.config_path, self.app, str(self.base.get("model_dir")), promoted["model_dir"])
            self.say(f"{self.config_path}: model_dir is now {promoted['model_dir']}")
        return {"result": "promoted", "champion": info["model"], "replaced": champion, "steps": timeline}

    def _roll_back(self, champion: str, timeline: list[dict], why: str) -> dict:
        self._deploy(self.base, lambda i: not i.get("challenger") and i["model"] == champion)
        self.say(f"rolled back: {champion} serves all traffic ({why})")
        return {"result": "rolled_back", "champion": champion, "why": why, "steps": timeline}


def promoted_args(base: dict, challenger: str, say: Callable[[str], None] = print) -> dict:
    """The app's args once the challenger is champion: its location as `model_dir`; or, where the champion is
    `models:/NAME@ALIAS` and the challenger a version of NAME, the args as they were, the alias moved to it."""
    from sam.tracking import MODEL_URI

    champion, candidate = MODEL_URI.match(str(base.get("model_dir", ""))), MODEL_URI.match(challenger)
    if champion and champion["alias"] and candidate and candidate["name"] == champion["name"]:
        from sam.tracking import client, registered_version

        name, version, _ = registered_version(challenger)
        client().set_registered_model_alias(name, champion["alias"], version)
        say(f"models:/{name}@{champion['alias']} now names version {version}")
        return dict(base)
    return {**base, "model_dir": challenger}


def name_champion(path: Path, app: dict, old: str, new: str) -> None:
    """The config file names the new champion, so the next `serve deploy` of it keeps it: its one
    `model_dir: OLD` line edited in place (comments kept), else the file rewritten from `app`'s config."""
    import yaml

    lines = path.read_text().splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if re.match(rf"^\s*model_dir:\s*['\"]?{re.escape(old)}['\"]?(\s|$)", line)]
    if len(found) == 1:
        lines[found[0]] = lines[found[0]].replace(old, new, 1)
        path.write_text("".join(lines))
        return
    config = yaml.safe_load(path.read_text())
    next(a for a in config["applications"] if a.get("name") == app.get("name"))["args"]["model_dir"] = new
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _label(step: Step) -> str:
    return "shadow" if step == "shadow" else f"{step:g}%"


def judge(figures: dict, checks: Checks) -> Optional[str]:
    """The first check the challenger's figures fail, named with its figure and limit; None: all passed."""
    if figures["requests"] < checks.min_requests:
        return f"min-requests: {figures['requests']} answers < {checks.min_requests}"
    if figures["error_rate"] > checks.max_error_rate:
        return f"max-error-rate: {figures['error_rate']:.2%} > {checks.max_error_rate:.2%}"
    if checks.max_p99_ms is not None and figures["p99_ms"] is not None and figures["p99_ms"] > checks.max_p99_ms:
        return f"max-p99-ms: p99 {figures['p99_ms']:g} ms > {checks.max_p99_ms:g} ms"
    if checks.min_agreement is not None and figures["agreement"] is not None and figures["agreement"] < checks.min_agreement:
        return f"min-agreement: {figures['agreement']:.1%} < {checks.min_agreement:.1%}"
    return None


def describe(figures: dict) -> str:
    challenger, champion = figures["challenger"], figures["champion"]
    agreement = "" if challenger["agreement"] is None else f", agreement {challenger['agreement']:.1%}"
    return (f"{figures['requests_per_s']:g} req/s; challenger {challenger['requests']} answers, errors "
            f"{challenger['error_rate']:.2%}, p99 {challenger['p99_ms']} ms{agreement}; champion {champion['requests']} "
            f"answers, p99 {champion['p99_ms']} ms")
