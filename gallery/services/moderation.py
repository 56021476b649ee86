"""Moderation: staff approve, reject, hide and unhide items; visitors report them. Every
change is logged. Readers re-check the database, so a hidden item leaves search at once;
the index writer drops it right after the commit and never re-adds it (it re-checks too)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import Image, ModerationAction, Report
from . import dispatch
from .inputs import acting_user, clean_text


@dataclass
class _Effects:
    """What a batch of moderation changes asks of the pipeline once committed."""

    to_index: list[int] = field(default_factory=list)  # already embedded: an index update
    to_remove: list[int] = field(default_factory=list)
    to_embed: list[int] = field(default_factory=list)  # back to processing (vector reused)


def _approve(image: Image, effects: _Effects) -> None:
    image.moderation = Image.Moderation.APPROVED
    if image.status == Image.Status.HIDDEN:
        image.status = Image.Status.PROCESSING
        effects.to_embed.append(image.pk)
    elif image.status == Image.Status.INDEXED:
        effects.to_index.append(image.pk)


def _reject(image: Image, effects: _Effects) -> None:
    image.moderation = Image.Moderation.REJECTED
    _hide(image, effects)


def _hide(image: Image, effects: _Effects) -> None:
    if image.status != Image.Status.FAILED:
        image.status = Image.Status.HIDDEN
    effects.to_remove.append(image.pk)


def _unhide(image: Image, effects: _Effects) -> None:
    if image.status == Image.Status.HIDDEN:
        image.moderation = Image.Moderation.APPROVED
        image.status = Image.Status.PROCESSING
        effects.to_embed.append(image.pk)


def _dismiss(image: Image, effects: _Effects) -> None:
    """Only closes the item's open reports."""


MODERATION_TRANSITIONS: dict[str, Callable[[Image, _Effects], None]] = {
    "approve": _approve,
    "reject": _reject,
    "hide": _hide,
    "unhide": _unhide,
    "dismiss": _dismiss,
}
MODERATION_ACTIONS = tuple(MODERATION_TRANSITIONS)


def images_moderate(image_ids: list[int], action: str, *, actor: Any = None, reason: str = "") -> int:
    """Apply one moderation action to the images, log it, close their open reports (but on
    unhide), and queue the index changes it implies after the commit."""
    transition = MODERATION_TRANSITIONS.get(action)
    if transition is None:
        raise ValueError(f"Unknown moderation action {action!r}")
    actor = acting_user(actor)
    images = list(Image.objects.filter(pk__in=image_ids))
    effects = _Effects()
    with transaction.atomic():
        for image in images:
            transition(image, effects)
            if image.pk in effects.to_embed:
                image.embed_attempts = 0
            image.save(update_fields=["moderation", "status", "embed_attempts", "updated_at"])
            ModerationAction.objects.create(image=image, action=action, reason=reason[:500], actor=actor)
            if action != "unhide":
                Report.objects.filter(image=image, resolved_at__isnull=True).update(
                    resolved_at=timezone.now(), resolved_by=actor
                )
        if effects.to_remove:
            dispatch.index_remove(effects.to_remove)
        if effects.to_index:
            dispatch.index_sync(effects.to_index)
        if effects.to_embed:  # the stored embedding is reused: this is only an index update
            dispatch.images_embed(effects.to_embed)
    return len(images)


def report_create(image: Image, reason: str, reporter: str = "") -> Report:
    """A visitor's report; it lands in the staff moderation queue. One open report per
    visitor (`inputs.visitor_key`) and item: staff see each complaint once."""
    reason = clean_text(reason, 500)
    if not reason:
        raise ValueError("Please say what is wrong with this item.")
    already = "You have already reported this item; staff will look at it."
    if reporter and Report.objects.filter(image=image, reporter=reporter, resolved_at__isnull=True).exists():
        raise ValueError(already)
    try:
        with transaction.atomic():
            report = Report.objects.create(image=image, reason=reason, reporter=reporter)
            ModerationAction.objects.create(image=image, action="report", reason=reason)
    except IntegrityError:  # the same visitor twice at once
        raise ValueError(already) from None
    return report
