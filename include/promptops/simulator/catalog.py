"""The simulated platform's fixed world: models, apps, prompt templates, teams, users, regions.

The catalog does not depend on the simulator's seed, so a scenario file can name a user, app,
template or node that exists whatever seed the simulator runs with. Token counts come from
the Azure LLM inference trace 2023 (Patel et al., "Splitwise: Efficient generative LLM
inference using phase splitting", ISCA 2024; CC-BY 4.0; see data/README.md and data/LICENSE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"

#: Services an ops action can target (restart_service / scale_out).
SERVICES = ("api_gateway", "api_workers", "intent_classifier", "model_router")

INTENTS = ("billing", "technical_support", "account_access", "refund", "product_question",
           "bug_report", "feature_request", "smalltalk")
INTENT_WEIGHTS = (0.16, 0.22, 0.10, 0.07, 0.17, 0.12, 0.06, 0.10)

REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-1")
REGION_WEIGHTS = (0.40, 0.20, 0.28, 0.12)

TEAMS = ("support", "growth", "platform", "research", "sales", "finance")

#: GPU nodes of the self-hosted models and how many GPUs each has.
GPU_NODES = {"gpu-node-01": 4, "gpu-node-02": 4, "gpu-node-03": 2, "gpu-node-04": 3}
GPU_MEMORY_MB = 81_920


@dataclass(frozen=True)
class Model:
    name: str
    provider: str
    #: Median time to first token (ms) and the lognormal sigma around it.
    ttft_ms: float
    sigma: float
    #: Milliseconds per generated token.
    ms_per_token: float
    supports_cache: bool
    gpu_nodes: tuple[str, ...] = ()
    #: GPU memory the weights take on each GPU of a node (self-hosted only).
    weights_mb: int = 0

    @property
    def self_hosted(self) -> bool:
        return self.provider == "self-hosted"


MODELS: tuple[Model, ...] = (
    Model("gpt-4o", "openai", 420.0, 0.45, 6.0, True),
    Model("gpt-4o-mini", "openai", 260.0, 0.40, 3.0, True),
    Model("claude-3-5-sonnet", "anthropic", 560.0, 0.45, 7.0, True),
    Model("claude-3-haiku", "anthropic", 300.0, 0.40, 3.0, True),
    Model("llama-3-70b", "self-hosted", 330.0, 0.50, 9.0, False,
          ("gpu-node-01", "gpu-node-02"), 38_000),
    Model("mistral-7b-instruct", "self-hosted", 70.0, 0.35, 2.5, False,
          ("gpu-node-03", "gpu-node-04"), 15_000),
)
MODEL_NAMES = tuple(m.name for m in MODELS)
MODEL_INDEX = {m.name: i for i, m in enumerate(MODELS)}


@dataclass(frozen=True)
class Template:
    name: str
    #: The version in production (1-based); 10% of calls still use the one before it.
    current_version: int


@dataclass(frozen=True)
class App:
    name: str
    weight: float
    #: Which Azure trace its token counts come from: "code" or "conv".
    trace: str
    templates: tuple[Template, ...]
    template_weights: tuple[float, ...]
    models: tuple[str, ...]
    model_weights: tuple[float, ...]


APPS: tuple[App, ...] = (
    App("support-chat", 0.32, "conv",
        (Template("support_triage", 2), Template("support_answer", 3)), (0.45, 0.55),
        ("claude-3-haiku", "gpt-4o-mini", "claude-3-5-sonnet"), (0.45, 0.35, 0.20)),
    App("code-assistant", 0.22, "code",
        (Template("code_complete", 3), Template("code_review", 1)), (0.75, 0.25),
        ("gpt-4o", "claude-3-5-sonnet", "llama-3-70b"), (0.40, 0.35, 0.25)),
    App("doc-summarizer", 0.16, "conv",
        (Template("summarize_doc", 2), Template("extract_facts", 1)), (0.7, 0.3),
        ("gpt-4o-mini", "mistral-7b-instruct", "llama-3-70b"), (0.45, 0.40, 0.15)),
    App("search-qa", 0.18, "conv",
        (Template("rag_answer", 3), Template("query_rewrite", 2)), (0.6, 0.4),
        ("gpt-4o", "llama-3-70b", "mistral-7b-instruct", "claude-3-haiku"),
        (0.30, 0.30, 0.25, 0.15)),
    App("email-drafter", 0.12, "conv",
        (Template("draft_reply", 2), Template("tone_rewrite", 1)), (0.65, 0.35),
        ("gpt-4o-mini", "claude-3-haiku"), (0.6, 0.4)),
)
APP_NAMES = tuple(a.name for a in APPS)
TEMPLATES: tuple[Template, ...] = tuple(t for a in APPS for t in a.templates)
TEMPLATE_NAMES = tuple(t.name for t in TEMPLATES)
TEMPLATE_APP = tuple(ai for ai, a in enumerate(APPS) for _ in a.templates)
#: prompt_version strings by number; index 0 unused.
VERSIONS = tuple(f"v{i}" for i in range(0, 10))

N_USERS = 200
#: Service accounts: callers outside the ordinary (Zipf) traffic, used only by scenario kinds
#: such as ``scheduled_batch``; (name, home app, team, region).
SERVICE_ACCOUNTS: tuple[tuple[str, str, str, str], ...] = (
    ("svc-nightly-batch", "doc-summarizer", "platform", "us-east-1"),
)
#: Errors the platform records on failed calls, with their base shares.
BASE_ERROR_CODES = (5000, 2001, 2002, 4003, 3002)
BASE_ERROR_WEIGHTS = (0.40, 0.22, 0.18, 0.12, 0.08)

_PROMPTS = {
    "billing": ("Why was I charged twice this month?", "Can I get an invoice for March?"),
    "technical_support": ("The export button does nothing.", "My API calls time out."),
    "account_access": ("I can't log in after the password reset.", "How do I enable 2FA?"),
    "refund": ("I'd like a refund for the annual plan.", "Refund status for order 1182?"),
    "product_question": ("Does the Pro plan include SSO?", "What file types can I upload?"),
    "bug_report": ("The chart shows yesterday's data twice.", "Search returns a 500."),
    "feature_request": ("Please add dark mode.", "Could you support CSV import?"),
    "smalltalk": ("Thanks, that helped!", "Hi there, how are you?"),
}
_RESPONSES = ("Here is what I found: ", "Sure. ", "I checked your account. ", "Thanks for the "
              "report. ")


@dataclass
class Catalog:
    """Users and their teams, home apps and regions, plus lookup arrays for generation."""

    users: tuple[str, ...] = field(init=False)
    user_team: np.ndarray = field(init=False)
    user_app: np.ndarray = field(init=False)
    user_region: np.ndarray = field(init=False)
    user_cum: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        # A fixed seed: the catalog is the same for every simulator seed (scenario files name
        # users and must keep working).
        rng = np.random.default_rng(20231116)
        self.users = tuple(f"user-{i:03d}" for i in range(1, N_USERS + 1))
        # Zipf-like activity (a few heavy users), shuffled so heavy users are not user-001..
        ranks = rng.permutation(N_USERS) + 1
        w = 1.0 / ranks.astype(np.float64) ** 1.1
        self.user_cum = np.cumsum(w / w.sum())
        self.user_team = rng.choice(len(TEAMS), N_USERS, p=[0.25, 0.2, 0.2, 0.15, 0.12, 0.08])
        app_w = np.array([a.weight for a in APPS])
        self.user_app = rng.choice(len(APPS), N_USERS, p=app_w / app_w.sum())
        self.user_region = rng.choice(len(REGIONS), N_USERS, p=REGION_WEIGHTS)
        # Service accounts come after the ordinary users (indexes >= N_USERS): the draws
        # above never pick them, so ordinary traffic is the same with or without them.
        self.users += tuple(name for name, *_ in SERVICE_ACCOUNTS)
        self.user_team = np.append(self.user_team, [TEAMS.index(t) for _, _, t, _ in
                                                    SERVICE_ACCOUNTS])
        self.user_app = np.append(self.user_app, [APP_NAMES.index(a) for _, a, _, _ in
                                                  SERVICE_ACCOUNTS])
        self.user_region = np.append(self.user_region, [REGIONS.index(r) for *_, r in
                                                        SERVICE_ACCOUNTS])

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.users)}

    def heaviest_users(self, n: int = 5) -> list[str]:
        w = np.diff(self.user_cum, prepend=0.0)
        return [self.users[i] for i in np.argsort(-w)[:n]]

    @cached_property
    def prompt_texts(self) -> tuple[tuple[str, str], ...]:
        """(prompt, response) pairs per intent, indexable by intent * 2 + k."""
        out = []
        for intent in INTENTS:
            for k, prompt in enumerate(_PROMPTS[intent]):
                out.append((prompt, _RESPONSES[k % len(_RESPONSES)] + f"({intent})"))
        return tuple(out)


@lru_cache(maxsize=1)
def catalog() -> Catalog:
    return Catalog()


@lru_cache(maxsize=2)
def token_trace(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_tokens, completion_tokens) arrays from the Azure trace, ``kind`` code or conv."""
    path = DATA_DIR / f"AzureLLMInferenceTrace_{kind}.csv"
    data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2), dtype=np.int64)
    return data[:, 0].copy(), data[:, 1].copy()


#: Dimensions a scenario slice may name, with the values each may take.
def slice_values() -> dict[str, tuple[str, ...]]:
    return {
        "model": MODEL_NAMES,
        "region": REGIONS,
        "user_id": catalog().users,
        "app": APP_NAMES,
        "prompt_template": TEMPLATE_NAMES,
        "prompt_version": VERSIONS[1:],
        "gpu_node": tuple(GPU_NODES),
        "team": TEAMS,
        "provider": ("openai", "anthropic", "self-hosted"),
    }
