"""Staff pages: the moderation queue, the moderation log and near-duplicate groups. Thin:
they call selectors and `services.images_moderate`; every form is CSRF-protected."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from . import selectors, services


@staff_member_required
def moderation_queue(request: HttpRequest) -> HttpResponse:
    show = request.GET.get("show", "pending")
    if show not in selectors.MODERATION_VIEWS:
        show = "pending"
    page = Paginator(selectors.moderation_queue(show), 60).get_page(request.GET.get("page"))
    return render(
        request,
        "gallery/moderation.html",
        {"page": page, "show": show, "counts": selectors.moderation_counts()},
    )


def _chosen(request: HttpRequest) -> tuple[list[int], str]:
    """(ids, action) of a bulk form, or of one item's button ("<id>:<action>")."""
    action = request.POST.get("action", "")
    ids = [int(x) for x in request.POST.getlist("ids") if x.isdigit()]
    single = request.POST.get("single", "")
    if ":" in single and single.split(":")[0].isdigit():
        ids, action = [int(single.split(":")[0])], single.split(":")[1]
    return ids, action


@staff_member_required
@require_POST
def moderation_act(request: HttpRequest) -> HttpResponse:
    ids, action = _chosen(request)
    if action not in services.MODERATION_ACTIONS or not ids:
        messages.error(request, "Choose at least one item and an action.")
    else:
        count = services.images_moderate(
            ids, action, actor=request.user, reason=request.POST.get("reason", "")
        )
        messages.success(request, f"{action.capitalize()}: {count} item{'s' if count != 1 else ''}.")
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, {request.get_host()}, require_https=request.is_secure()):
        back = ""  # only back to a page of this site
    return redirect(back or "gallery:moderation")


@staff_member_required
def moderation_log(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.moderation_log(), 100).get_page(request.GET.get("page"))
    return render(request, "gallery/moderation_log.html", {"page": page})


@staff_member_required
def near_duplicates(request: HttpRequest) -> HttpResponse:
    newest, done = selectors.duplicate_scan_latest()
    page, groups = selectors.duplicate_groups_page(done, request.GET.get("page")) if done else (None, [])
    return render(
        request, "gallery/duplicates.html", {"groups": groups, "page": page, "scan": done, "newest": newest}
    )


@staff_member_required
@require_POST
def near_duplicates_scan(request: HttpRequest) -> HttpResponse:
    scan = services.duplicate_scan_start(user=request.user)
    messages.success(request, f"Looking for copies (scan {scan.pk}); the groups appear here when it is done.")
    return redirect("gallery:duplicates")
