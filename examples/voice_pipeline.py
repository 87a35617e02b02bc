"""An instrumented voice-note pipeline, written the way a user writes one with
voicepipe_obs: WhatsApp / app voice notes → Whisper transcription → LLM claims
extraction → entity resolution → insight drafts → coach confirmation.

The provider calls are simulated (no network, no API keys) but behave like the
real thing: per-stage latency distributions (lognormal; transcription and drafts
take seconds, entity resolution well under one), per-model costs (whisper-1 per
audio minute, gpt-4o / gpt-4o-mini per token), confidence scores, ~5% failures
spread over the stages with realistic exceptions (``TimeoutError``,
:class:`RateLimitError`, :class:`AudioDecodeError`, :class:`LLMOutputError`, ...),
entities that need a reviewer's disambiguation (resolved later), drafts that
coaches confirm or reject later, six organisations with their coaches on WhatsApp
and the app, and a short OpenAI outage that trips a circuit breaker.

Two ways to run it:

* **Backfill** (:func:`backfill`): a :class:`SimClock` is handed to
  ``vp.Recorder(clock=...)`` and advanced by each simulated latency, so seven days of
  history are written in seconds with explicit, realistic timestamps — no sleeping.
* **Live** (:func:`run_live`, or :class:`VoicePipeline` without a clock): the real
  clock, with tiny sleeps standing in for the provider calls.

Everything about an artifact (organisation, coach, channel, audio length,
transcript, claims, latencies, whether a stage fails on a given attempt) is a
deterministic function of its artifact id and the attempt number, so any stage
can be re-run later — which is what the retry handlers do.

Retry handlers (``voicepipe retry ART --app voicepipe_obs._examples.voice_pipeline``,
or ``--app examples.voice_pipeline`` from a checkout): importing this module
registers handlers for ``transcription``, ``claims_extraction``,
``entity_resolution``, ``draft_generation`` and ``full``. Each re-runs that stage
and the stages after it through the same instrumented stage functions (earlier
outputs are re-loaded, as a real pipeline would read them from its database). They
record through ``vp.get_recorder()`` — the CLI configures it for its data root —
unless :func:`use_recorder` gave this module a recorder. Called outside an
artifact context (say, from a queue worker) a handler opens one itself with
``rec.artifact(artifact_id, retry_attempt=attempt)``.

Failure markers, for tests and demos: an artifact id containing

* ``fail-<stage>-once`` fails at ``<stage>`` on its first attempt (attempt 0) and
  succeeds on every retry (attempt >= 1);
* ``fail-<stage>-always`` fails at ``<stage>`` on every attempt;
* ``no-fail`` never fails;

where ``<stage>`` is transcription, claims_extraction, entity_resolution or
draft_generation. Ids with a marker never fail at random and are always audio
notes. Example: ``art-test-fail-claims_extraction-once``.

Importing this module writes nothing; its only side effect is registering the
retry handlers. Run it directly to write a store::

    python examples/voice_pipeline.py --data ./voicepipe-data --days 7 --live 5
"""

from __future__ import annotations

import argparse
import contextvars
import datetime as dt
import hashlib
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import voicepipe_obs as vp

US = 1_000_000
STAGE_ORDER = ("transcription", "claims_extraction", "entity_resolution", "draft_generation")

# ------------------------------------------------------------------- the world


@dataclass(frozen=True)
class Organization:
    organization_id: str
    coaches: int
    weight: float  # share of the traffic
    whatsapp_share: float  # the rest comes through the app
    draft_model: str  # premium organisations get gpt-4o drafts
    daily_budget_usd: float  # the pipeline's own cost guard (budget_* events)


ORGANIZATIONS: tuple[Organization, ...] = (
    Organization("org-northwind-athletics", 6, 0.28, 0.80, "gpt-4o-mini", 0.40),
    Organization("org-harbor-health", 5, 0.20, 0.55, "gpt-4o", 0.60),
    Organization("org-summit-coaching", 4, 0.16, 0.70, "gpt-4o-mini", 0.60),
    Organization("org-bluebird-wellness", 3, 0.14, 0.40, "gpt-4o-mini", 0.50),
    Organization("org-meridian-sports", 3, 0.12, 0.90, "gpt-4o", 0.35),
    Organization("org-oakridge-academy", 2, 0.10, 0.30, "gpt-4o-mini", 0.40),
)

#: USD: whisper-1 per audio minute; chat models per 1M (input, output) tokens.
WHISPER_PER_MINUTE = 0.006
TOKEN_PRICES: dict[str, tuple[float, float]] = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60)}

#: Probability that a stage fails at random on the first attempt (retries: a fifth).
FAILURE_RATES: dict[str, float] = {
    "transcription": 0.012,
    "claims_extraction": 0.016,
    "entity_resolution": 0.008,
    "draft_generation": 0.014,
}


# ------------------------------------------------------------------ exceptions


class ProviderError(Exception):
    """Base of the simulated provider errors (the error_code is the class name)."""


class RateLimitError(ProviderError):
    """HTTP 429 from the provider."""


class AudioDecodeError(ProviderError):
    """ffmpeg could not decode the uploaded audio."""


class LLMOutputError(ProviderError):
    """The model returned something that is not the JSON we asked for."""


class ContentFilterError(ProviderError):
    """The provider's content filter blocked the completion."""


class CircuitOpenError(ProviderError):
    """The circuit breaker is open: the call was not attempted."""


class EntityStoreUnavailable(ConnectionError):
    """The entity index (the vector database) refused the connection."""


def _stage_error(stage: str, rng: random.Random, model: str) -> tuple[BaseException, float]:
    """A realistic failure for a stage, and the seconds it took to fail."""
    if stage == "transcription":
        choice = rng.choices(("decode", "timeout", "rate"), weights=(5, 3, 2))[0]
        if choice == "decode":
            return AudioDecodeError(
                "ffmpeg: invalid data found when processing input (audio/ogg; codecs=opus)"
            ), 0.4
        if choice == "timeout":
            return TimeoutError("whisper-1: request timed out after 60.0 s"), 60.0
        return RateLimitError("whisper-1: 429 Too Many Requests (rate limit reached, retry after 20 s)"), 0.3
    if stage == "entity_resolution":
        if rng.random() < 0.7:
            return EntityStoreUnavailable(
                "entity index unavailable: connection refused (pgvector at db:5432)"
            ), 2.0
        return LLMOutputError("gpt-4o-mini: candidate ranking is not valid JSON"), 1.1
    choice = rng.choices(
        ("timeout", "rate", "json", "filter"), weights=(4, 3, 3, 1 if stage == "draft_generation" else 0)
    )[0]
    if choice == "timeout":
        return TimeoutError(f"{model}: request timed out after 30.0 s"), 30.0
    if choice == "rate":
        return RateLimitError(f"{model}: 429 Too Many Requests (tokens per minute limit reached)"), 0.5
    if choice == "json":
        return LLMOutputError(
            f"{model}: output is not valid JSON: Expecting ',' delimiter: line 14 column 5"
        ), 6.0
    return ContentFilterError(f"{model}: the response was filtered by the content management policy"), 3.0


_MARKER = re.compile(
    r"fail-(transcription|claims_extraction|entity_resolution|draft_generation)-(once|always)"
)
_MARKER_ERRORS: dict[str, Callable[[], BaseException]] = {
    "transcription": lambda: TimeoutError("whisper-1: request timed out after 60.0 s (failure marker)"),
    "claims_extraction": lambda: TimeoutError("gpt-4o: request timed out after 30.0 s (failure marker)"),
    "entity_resolution": lambda: EntityStoreUnavailable("entity index unavailable (failure marker)"),
    "draft_generation": lambda: RateLimitError("gpt-4o-mini: 429 Too Many Requests (failure marker)"),
}


def failure_marker(artifact_id: str) -> tuple[str, str] | None:
    """(stage, "once" | "always") for an id carrying a failure marker, else None."""
    m = _MARKER.search(artifact_id)
    return (m.group(1), m.group(2)) if m else None


def _has_marker(artifact_id: str) -> bool:
    return failure_marker(artifact_id) is not None or "no-fail" in artifact_id


def _rng(*parts: object) -> random.Random:
    """A generator seeded by the parts (stable across runs and processes)."""
    return random.Random(":".join(str(p) for p in parts))


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


# --------------------------------------------------------------- voice notes


@dataclass(frozen=True)
class VoiceNote:
    """What the pipeline knows about an artifact when it arrives (derived from its id)."""

    artifact_id: str
    voice_note_id: str
    organization_id: str
    coach_user_id: str
    source_channel: str  # whatsapp | app
    kind: str  # audio | text (app users can type)
    audio_seconds: float
    word_count: int
    draft_model: str

    @property
    def organization(self) -> Organization:
        return next(o for o in ORGANIZATIONS if o.organization_id == self.organization_id)


def voice_note(artifact_id: str) -> VoiceNote:
    """The voice note behind an artifact id: organisation, coach, channel, length."""
    rng = _rng(artifact_id, "note")
    org = rng.choices(ORGANIZATIONS, weights=[o.weight for o in ORGANIZATIONS])[0]
    coach = f"coach-{org.organization_id.split('-')[1]}-{rng.randrange(org.coaches) + 1:02d}"
    channel = "whatsapp" if rng.random() < org.whatsapp_share else "app"
    kind = "text" if channel == "app" and rng.random() < 0.15 and not _has_marker(artifact_id) else "audio"
    seconds = min(max(_lognormal(rng, 55.0, 0.6), 4.0), 600.0) if kind == "audio" else 0.0
    words = round(seconds * rng.uniform(2.1, 2.7)) if kind == "audio" else rng.randrange(20, 180)
    digest = hashlib.sha1(artifact_id.encode()).hexdigest()[:12]
    return VoiceNote(
        artifact_id=artifact_id,
        voice_note_id=f"vn-{digest}",
        organization_id=org.organization_id,
        coach_user_id=coach,
        source_channel=channel,
        kind=kind,
        audio_seconds=round(seconds, 2),
        word_count=max(words, 5),
        draft_model=org.draft_model,
    )


@dataclass(frozen=True)
class Transcript:
    words: int
    confidence: float


@dataclass(frozen=True)
class Claims:
    count: int
    confidence: float


@dataclass(frozen=True)
class Entities:
    count: int
    ambiguous: int


# The "database": what an earlier, successful run of a stage produced. A retry of a
# later stage reads these back instead of calling the provider again.


def load_transcript(note: VoiceNote) -> Transcript:
    rng = _rng(note.artifact_id, "transcript")
    base = 0.93 if note.source_channel == "app" else 0.88  # WhatsApp audio is compressed harder
    confidence = 1.0 if note.kind == "text" else min(max(rng.gauss(base, 0.04), 0.55), 0.995)
    return Transcript(words=note.word_count, confidence=round(confidence, 3))


def load_claims(note: VoiceNote, transcript: Transcript) -> Claims:
    rng = _rng(note.artifact_id, "claims")
    count = max(1, round(transcript.words / 45 + rng.gauss(0.5, 1.0)))
    confidence = min(max(rng.gauss(0.84, 0.06) - (0.9 - transcript.confidence) * 0.5, 0.4), 0.99)
    return Claims(count=min(count, 25), confidence=round(confidence, 3))


def load_entities(note: VoiceNote, claims: Claims) -> Entities:
    rng = _rng(note.artifact_id, "entities")
    count = max(1, round(claims.count * rng.uniform(0.6, 1.4)))
    ambiguous = min(rng.choice((1, 1, 1, 2, 2, 3)), count) if rng.random() < 0.12 else 0
    return Entities(count=count, ambiguous=ambiguous)


def _chat_cost(model: str, tokens_in: int, tokens_out: int) -> float:
    price_in, price_out = TOKEN_PRICES[model]
    return round((tokens_in * price_in + tokens_out * price_out) / 1e6, 6)


# ------------------------------------------------------------------ simulation


class SimClock:
    """Simulated time for backfills: ``Recorder(clock=sim.now_us)``; the pipeline
    advances it by each simulated latency instead of sleeping."""

    def __init__(self, start_us: int) -> None:
        self.us = start_us

    def now_us(self) -> int:
        return self.us

    def set(self, us: int) -> None:
        self.us = us

    def advance(self, seconds: float) -> None:
        self.us += max(round(seconds * US), 0)


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive chat-completion failures; after
    ``cooldown_s`` one trial call is let through (closing it on success)."""

    threshold: int = 3
    cooldown_s: float = 300.0
    failures: int = 0
    open_until_us: int | None = None
    opened_at_us: int | None = None


@dataclass
class _Deferred:
    """Events that happen later (coach reviews, reviewer resolutions), written with
    explicit timestamps when they fall before the backfill's horizon."""

    horizon_us: int
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)


class VoicePipeline:
    """The pipeline. Stage methods are instrumented with the recorder given (or the
    module's, see :func:`use_recorder`, else ``vp.get_recorder()``).

    Args:
        recorder: where events go.
        clock: a :class:`SimClock` for backfills (the recorder must have been made
            with ``clock=clock.now_us``); None for live runs on the real clock.
        live_speed: in live runs, the fraction of each simulated latency actually slept.
        horizon_us: in backfills, later events (reviews) up to this time are written.
    """

    def __init__(
        self,
        recorder: vp.Recorder | None = None,
        *,
        clock: SimClock | None = None,
        live_speed: float = 0.005,
        horizon_us: int | None = None,
    ) -> None:
        self.rec = recorder if recorder is not None else current_recorder()
        self.clock = clock
        self.live_speed = live_speed
        self.deferred = _Deferred(horizon_us) if horizon_us is not None else None
        self.breaker = CircuitBreaker()
        self.outages: list[tuple[int, int]] = []  # (start_us, end_us): the chat API answers 429
        self._spend: dict[tuple[str, str], float] = {}
        # The decorator form: the same functions serve first runs and retries.
        self.transcribe = self.rec.stage("transcription")(self._transcribe)
        self.extract_claims = self.rec.stage("claims_extraction")(self._extract_claims)
        self.generate_drafts = self.rec.stage("draft_generation")(self._generate_drafts)

    # -- time ----------------------------------------------------------------------

    def now_us(self) -> int:
        return self.clock.now_us() if self.clock is not None else time.time_ns() // 1000

    def wait(self, seconds: float) -> None:
        """Spend ``seconds`` of (simulated) time."""
        if self.clock is not None:
            self.clock.advance(seconds)
        elif seconds > 0:
            time.sleep(seconds * self.live_speed)

    # -- running artifacts -------------------------------------------------------------

    def process(self, artifact_id: str) -> str:
        """Run a newly received artifact through every stage: "completed" or "failed".
        Like a worker loop, it records a failure (the stage's failure event and
        artifact_failed) and carries on with the next artifact."""
        note = voice_note(artifact_id)
        try:
            with self.rec.artifact(
                artifact_id,
                organization_id=note.organization_id,
                coach_user_id=note.coach_user_id,
                voice_note_id=note.voice_note_id,
                source_channel=note.source_channel,
            ):
                self.wait(_lognormal(_rng(artifact_id, "queue"), 1.5, 0.8))  # waiting for a worker
                self.run_from(note, "transcription", attempt=0)
        except Exception:
            return "failed"
        return "completed"

    def resume(self, artifact_id: str, stage: str, attempt: int) -> None:
        """Re-run ``stage`` and the stages after it ("full": all of them) for an
        existing artifact. Raises what the stage raises."""
        note = voice_note(artifact_id)
        first = "transcription" if stage == "full" else stage
        ctx = vp.current_artifact()
        if ctx is not None and ctx.artifact_id == artifact_id:  # the retry runner bound it
            self.run_from(note, first, attempt)
            return
        with self.rec.artifact(
            artifact_id,
            organization_id=note.organization_id,
            coach_user_id=note.coach_user_id,
            voice_note_id=note.voice_note_id,
            source_channel=note.source_channel,
            retry_attempt=attempt,
        ):
            self.run_from(note, first, attempt)

    def run_from(self, note: VoiceNote, first: str, attempt: int) -> None:
        """Run the stages from ``first`` on; earlier outputs are loaded, not recomputed."""
        start = STAGE_ORDER.index(first)
        if start <= 0 and note.kind == "audio":
            transcript = self.transcribe(note, attempt)
        else:
            transcript = load_transcript(note)
        claims = (
            self.extract_claims(note, transcript, attempt) if start <= 1 else load_claims(note, transcript)
        )
        entities = self.resolve_entities(note, claims, attempt) if start <= 2 else load_entities(note, claims)
        drafts = self.generate_drafts(note, claims, entities, attempt)
        self._later_reviews(note, entities, drafts)

    # -- the stages ----------------------------------------------------------------------

    def _transcribe(self, note: VoiceNote, attempt: int) -> Transcript:
        rng = _rng(note.artifact_id, "transcription", attempt)
        self._maybe_fail(note, "transcription", attempt, rng, "whisper-1")
        self.wait(0.8 + note.audio_seconds * 0.08 * _lognormal(rng, 1.0, 0.35))
        transcript = load_transcript(note)
        cost = round(note.audio_seconds / 60 * WHISPER_PER_MINUTE, 6)
        self.rec.annotate(
            ai_model="whisper-1",
            ai_cost=cost,
            confidence_score=transcript.confidence,
            transcript_duration=note.audio_seconds,
            transcript_word_count=transcript.words,
        )
        self._track_spend(note, cost)
        return transcript

    def _extract_claims(self, note: VoiceNote, transcript: Transcript, attempt: int) -> Claims:
        rng = _rng(note.artifact_id, "claims_extraction", attempt)
        self._chat_call(note, "claims_extraction", attempt, rng, "gpt-4o")
        claims = load_claims(note, transcript)
        self.wait(_lognormal(rng, 2.2 + claims.count * 0.25, 0.4))
        tokens_in = round(transcript.words * 1.35) + 900  # transcript + instructions
        cost = _chat_cost("gpt-4o", tokens_in, claims.count * 55 + 40)
        self.rec.annotate(
            ai_model="gpt-4o", ai_cost=cost, claim_count=claims.count, confidence_score=claims.confidence
        )
        self._track_spend(note, cost)
        return claims

    def resolve_entities(self, note: VoiceNote, claims: Claims, attempt: int) -> Entities:
        # The context-manager form of a stage.
        with self.rec.stage("entity_resolution") as st:
            rng = _rng(note.artifact_id, "entity_resolution", attempt)
            self._maybe_fail(note, "entity_resolution", attempt, rng, "gpt-4o-mini")
            entities = load_entities(note, claims)
            self.wait(_lognormal(rng, 0.3, 0.5))  # vector search
            cost = 0.0
            if entities.ambiguous:  # let a small model rank the candidates first
                self._chat_call(note, "entity_resolution", attempt, rng, "gpt-4o-mini", check_failure=False)
                self.wait(_lognormal(rng, 0.6, 0.3))
                cost = _chat_cost("gpt-4o-mini", 600 * entities.ambiguous, 80 * entities.ambiguous)
            st.annotate(
                entity_count=entities.count,
                disambiguation_count=entities.ambiguous,
                confidence_score=round(min(max(rng.gauss(0.9, 0.05), 0.5), 0.999), 3),
                ai_model="gpt-4o-mini" if entities.ambiguous else None,
                ai_cost=cost or None,
            )
            self._track_spend(note, cost)
            return entities

    def _generate_drafts(self, note: VoiceNote, claims: Claims, entities: Entities, attempt: int) -> int:
        rng = _rng(note.artifact_id, "draft_generation", attempt)
        model = note.draft_model
        self._chat_call(note, "draft_generation", attempt, rng, model)
        drafts = max(1, min(4, round(claims.count / 3 + rng.random())))
        self.wait(_lognormal(rng, 3.0 + drafts * 0.6, 0.35))
        cost = _chat_cost(model, claims.count * 80 + entities.count * 30 + 1200, drafts * 180)
        self.rec.annotate(ai_model=model, ai_cost=cost, draft_count=drafts)
        self._track_spend(note, cost)
        return drafts

    # -- providers, failures and the breaker ---------------------------------------------

    def _maybe_fail(self, note: VoiceNote, stage: str, attempt: int, rng: random.Random, model: str) -> None:
        marker = failure_marker(note.artifact_id)
        if marker is not None:
            if marker[0] == stage and (marker[1] == "always" or attempt == 0):
                self.wait(0.2)
                raise _MARKER_ERRORS[stage]()
            return
        if _has_marker(note.artifact_id):
            return
        rate = FAILURE_RATES[stage] * (1.0 if attempt == 0 else 0.2)
        if rng.random() < rate:
            error, seconds = _stage_error(stage, rng, model)
            self.wait(seconds)
            if isinstance(error, RateLimitError):
                self._rate_limited(stage, model)
            raise error

    def _chat_call(
        self,
        note: VoiceNote,
        stage: str,
        attempt: int,
        rng: random.Random,
        model: str,
        *,
        check_failure: bool = True,
    ) -> None:
        """A chat-completion call through the circuit breaker."""
        br = self.breaker
        now = self.now_us()
        if br.open_until_us is not None and now < br.open_until_us:
            self.wait(0.001)
            raise CircuitOpenError(f"{model}: circuit breaker open, call not attempted")
        trial = br.open_until_us is not None
        try:
            if any(start <= now < end for start, end in self.outages):
                self.wait(0.4)
                self._rate_limited(stage, model)
                raise RateLimitError(f"{model}: 429 Too Many Requests (provider overloaded)")
            if check_failure:
                self._maybe_fail(note, stage, attempt, rng, model)
        except (RateLimitError, TimeoutError) as exc:
            br.failures += 1
            if trial or br.failures >= br.threshold:
                self._open_breaker(exc)
            raise
        br.failures = 0
        if trial:
            opened = br.opened_at_us or now
            br.open_until_us = br.opened_at_us = None
            self._system_emit(
                "circuit_breaker_closed",
                attributes={"dependency": "openai-chat", "open_for_s": f"{(now - opened) / US:.0f}"},
            )

    def _open_breaker(self, exc: BaseException) -> None:
        br = self.breaker
        now = self.now_us()
        br.open_until_us = now + round(br.cooldown_s * US)
        if br.opened_at_us is None:
            br.opened_at_us = now
        self._system_emit(
            "circuit_breaker_opened",
            attributes={
                "dependency": "openai-chat",
                "consecutive_failures": str(br.failures),
                "cooldown_s": f"{br.cooldown_s:.0f}",
                "last_error": type(exc).__name__,
            },
        )

    def _rate_limited(self, stage: str, model: str) -> None:
        self.rec.emit(
            "rate_limit_hit", pipeline_stage=stage, ai_model=model, attributes={"retry_after_s": "20"}
        )

    def _system_emit(self, event_type: str, **fields: Any) -> None:
        """An event about the system, not an artifact: emitted outside any artifact context."""
        contextvars.Context().run(self.rec.emit, event_type, **fields)

    def _track_spend(self, note: VoiceNote, cost: float) -> None:
        """The pipeline's own cost guard: budget events per organisation and UTC day."""
        if not cost:
            return
        day = dt.datetime.fromtimestamp(self.now_us() / US, dt.timezone.utc).strftime("%Y-%m-%d")
        key = (note.organization_id, day)
        before = self._spend.get(key, 0.0)
        after = self._spend[key] = before + cost
        budget = note.organization.daily_budget_usd
        for ratio, event in ((0.8, "budget_threshold_reached"), (1.0, "budget_exceeded")):
            if before < budget * ratio <= after:
                self._system_emit(
                    event,
                    organization_id=note.organization_id,
                    attributes={"period": day, "budget_usd": f"{budget:.2f}", "spent_usd": f"{after:.4f}"},
                )

    # -- later events --------------------------------------------------------------------

    def _later_reviews(self, note: VoiceNote, entities: Entities, drafts: int) -> None:
        """Coaches confirm or reject drafts, reviewers resolve ambiguous entities — later.
        Written (with explicit timestamps) only in backfills, up to the horizon."""
        if self.deferred is None:
            return
        rng = _rng(note.artifact_id, "reviews")
        now = self.now_us()
        ctx: dict[str, Any] = {
            "artifact_id": note.artifact_id,
            "organization_id": note.organization_id,
            "coach_user_id": note.coach_user_id,
            "voice_note_id": note.voice_note_id,
        }
        if entities.ambiguous and rng.random() < 0.85:
            at = now + round(_lognormal(rng, 3 * 3600, 1.0) * US)
            self.deferred.events.append(
                (at, "entity_user_resolved", {**ctx, "disambiguation_count": entities.ambiguous})
            )
        if rng.random() < 0.9:  # some coaches never get round to it
            at = now + round(_lognormal(rng, 2 * 3600, 1.2) * US)
            for i in range(drafts):
                confirmed = rng.random() < 0.82
                self.deferred.events.append(
                    (
                        at + i * round(rng.uniform(5, 40) * US),
                        "draft_confirmed" if confirmed else "draft_rejected",
                        {**ctx, "draft_count": 1, "attributes": {"draft": str(i + 1)}},
                    )
                )

    def write_deferred(self) -> int:
        """Write the later events that fall before the horizon; the number written."""
        if self.deferred is None:
            return 0
        horizon = self.deferred.horizon_us
        due = [e for e in self.deferred.events if e[0] <= horizon]
        for at, event_type, fields in due:
            self.rec.emit(event_type, timestamp=at / US, **fields)
        self.deferred.events.clear()
        return len(due)


# ----------------------------------------------------------------- backfill & live


def _arrival_times(rng: random.Random, start_us: int, end_us: int, per_day: int) -> list[int]:
    """Arrival times with a daily rhythm (busy 08-19 UTC, quiet nights, slower weekends)."""
    hour_weights = [0.2, 0.1, 0.1, 0.1, 0.2, 0.4, 0.8, 1.5, 2.4, 2.8, 2.7, 2.5,
                    2.2, 2.5, 2.7, 2.6, 2.3, 2.0, 1.6, 1.2, 0.9, 0.7, 0.5, 0.3]  # fmt: skip
    total = sum(hour_weights)
    times: list[int] = []
    day_us = 86_400 * US
    day = start_us - start_us % day_us
    while day < end_us:
        weekday = dt.datetime.fromtimestamp(day / US, dt.timezone.utc).weekday()
        expected = per_day * (0.45 if weekday >= 5 else 1.0) * rng.uniform(0.85, 1.15)
        for hour, weight in enumerate(hour_weights):
            lam = expected * weight / total
            n = _poisson(rng, lam)
            for _ in range(n):
                t = day + hour * 3600 * US + rng.randrange(3600 * US)
                if start_us <= t < end_us:
                    times.append(t)
        day += day_us
    return sorted(times)


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _artifact_id(t_us: int, rng: random.Random, suffix: str = "") -> str:
    stamp = dt.datetime.fromtimestamp(t_us / US, dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"art-{stamp}-{rng.getrandbits(24):06x}{suffix}"


@dataclass(frozen=True)
class BackfillResult:
    artifacts: int
    completed: int
    failed: int
    later_events: int
    start_us: int
    end_us: int
    outage: tuple[int, int] | None
    #: events the recorder could not store (a full or read-only disk: its warnings say why)
    lost: int = 0


def backfill(
    root: str | Path,
    *,
    days: float = 7,
    per_day: int = 150,
    seed: int = 7,
    end: dt.datetime | None = None,
    outage: bool = True,
) -> BackfillResult:
    """Write ``days`` of history ending at ``end`` (default: one minute ago) under
    ``root``, on a simulated clock (explicit timestamps, no sleeping). With
    ``outage``, a 20-minute provider outage about 60% of the way through trips the
    circuit breaker."""
    end_dt = end or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    end_us = round(end_dt.timestamp() * US)
    start_us = end_us - round(days * 86_400 * US)
    rng = _rng("backfill", seed)
    arrivals = _arrival_times(rng, start_us, end_us, per_day)
    window: tuple[int, int] | None = None
    if outage and days >= 1:
        # A weekday afternoon about 60% of the way through the history.
        t = start_us + round((end_us - start_us) * 0.6)
        t = t - t % (86_400 * US) + 14 * 3600 * US + 5 * 60 * US
        while dt.datetime.fromtimestamp(t / US, dt.timezone.utc).weekday() >= 5 or t >= end_us:
            t -= 86_400 * US
        if t > start_us:
            window = (t, t + 20 * 60 * US)
            burst = max(5, min(12, per_day // 12))  # a busy session
            gap = 25 * 60 * US // burst
            arrivals += [t + i * gap + rng.randrange(gap // 4) for i in range(burst)]
            arrivals.sort()
    clock = SimClock(start_us)
    rec = vp.Recorder(
        root,
        clock=clock.now_us,
        durability="memory",  # a backfill is re-runnable: no crash spool needed
        flush_interval=3600,
        batch_size=500_000,  # bounded memory: large backfills are written as they go
        max_buffer=10_000_000,
        recover=False,
    )
    completed = failed = 0
    try:
        pipeline = VoicePipeline(rec, clock=clock, horizon_us=end_us)
        if window is not None:
            pipeline.outages.append(window)
        for t in arrivals:
            clock.set(t)
            if pipeline.process(_artifact_id(t, rng)) == "completed":
                completed += 1
            else:
                failed += 1
        later = pipeline.write_deferred()
        rec.flush()
    finally:
        rec.close()
    lost = rec.stats()["dropped"]
    return BackfillResult(len(arrivals), completed, failed, later, start_us, end_us, window, lost)


@dataclass(frozen=True)
class LiveResult:
    completed: list[str]
    failed: list[str]
    in_flight: list[str]


def run_live(
    recorder: vp.Recorder | None = None,
    *,
    count: int = 5,
    in_flight: int = 2,
    seed: int = 7,
    live_speed: float = 0.005,
) -> LiveResult:
    """Process ``count`` artifacts now, on the real clock (tiny sleeps), and leave
    ``in_flight`` more received but unfinished (one mid-transcription, the rest queued)."""
    rec = recorder if recorder is not None else current_recorder()
    rng = _rng("live", seed, time.time_ns())
    pipeline = VoicePipeline(rec, live_speed=live_speed)
    done: list[str] = []
    failed: list[str] = []
    for _ in range(count):
        aid = _artifact_id(time.time_ns() // 1000, rng, "-live")
        (done if pipeline.process(aid) == "completed" else failed).append(aid)
    waiting: list[str] = []
    for i in range(in_flight):
        aid = _artifact_id(time.time_ns() // 1000, rng, "-live")
        note = voice_note(aid)
        while i == 0 and note.kind != "audio":  # the one a worker picked up is audio
            aid = _artifact_id(time.time_ns() // 1000, rng, "-live")
            note = voice_note(aid)
        ctx: dict[str, Any] = {
            "artifact_id": aid,
            "organization_id": note.organization_id,
            "coach_user_id": note.coach_user_id,
            "voice_note_id": note.voice_note_id,
        }
        rec.emit("artifact_received", source_channel=note.source_channel, new_status="received", **ctx)
        if i == 0:  # a worker has picked this one up
            rec.emit("transcription_started", stage_started_at=time.time(), **ctx)
        waiting.append(aid)
    return LiveResult(done, failed, waiting)


# ------------------------------------------------------------------- retry handlers

_recorder: vp.Recorder | None = None


def current_recorder() -> vp.Recorder:
    """The recorder this module records through: :func:`use_recorder`'s, else the default."""
    return _recorder if _recorder is not None else vp.get_recorder()


def _retry(stage: str, artifact_id: str, attempt: int) -> None:
    VoicePipeline(current_recorder()).resume(artifact_id, stage, attempt)


@vp.retry_handler("transcription")
def retry_transcription(artifact_id: str, attempt: int) -> None:
    """Re-transcribe, then extract, resolve and draft again."""
    _retry("transcription", artifact_id, attempt)


@vp.retry_handler("claims_extraction")
def retry_claims_extraction(artifact_id: str, attempt: int) -> None:
    """Re-extract claims from the stored transcript, then resolve and draft again."""
    _retry("claims_extraction", artifact_id, attempt)


@vp.retry_handler("entity_resolution")
def retry_entity_resolution(artifact_id: str, attempt: int) -> None:
    """Resolve the stored claims' entities again, then draft."""
    _retry("entity_resolution", artifact_id, attempt)


@vp.retry_handler("draft_generation")
def retry_draft_generation(artifact_id: str, attempt: int) -> None:
    """Generate the drafts again from the stored claims and entities."""
    _retry("draft_generation", artifact_id, attempt)


@vp.retry_handler("full")
def retry_full(artifact_id: str, attempt: int) -> None:
    """Run the whole pipeline again for the artifact."""
    _retry("full", artifact_id, attempt)


RETRY_HANDLERS: dict[str, Callable[[str, int], None]] = {
    "transcription": retry_transcription,
    "claims_extraction": retry_claims_extraction,
    "entity_resolution": retry_entity_resolution,
    "draft_generation": retry_draft_generation,
    "full": retry_full,
}


def use_recorder(recorder: vp.Recorder | None) -> None:
    """Record this module's retries (and live runs) through ``recorder`` (None: back
    to the default recorder); the handlers are re-registered with it."""
    global _recorder
    _recorder = recorder
    for stage, fn in RETRY_HANDLERS.items():
        register = vp.retry_handler if recorder is None else recorder.retry_handler
        register(stage)(fn)


# ------------------------------------------------------------------------- script


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a week of simulated pipeline history.")
    parser.add_argument("--data", default="./voicepipe-data", help="data root")
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--per-day", type=int, default=150, help="artifacts per weekday")
    parser.add_argument("--live", type=int, default=5, help="live artifacts after the backfill")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    result = backfill(args.data, days=args.days, per_day=args.per_day, seed=args.seed)
    print(f"backfilled {result.artifacts} artifacts ({result.failed} failed) under {args.data}")
    if args.live:
        with vp.Recorder(args.data) as rec:
            live = run_live(rec, count=args.live, seed=args.seed)
        print(
            f"live: {len(live.completed)} completed, {len(live.failed)} failed, {len(live.in_flight)} in flight"
        )


if __name__ == "__main__":
    main()
