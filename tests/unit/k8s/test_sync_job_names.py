"""Sync Job and CronJob names are unique per kind and object: a FeatureView and a VectorIndex (and a
ModelRegistry) of one name never share a CronJob or an on-demand Job, and the FeatureView's names are those
it had before the kind became part of them (no rename on upgrade)."""

from __future__ import annotations

import hashlib
import itertools

from mlinfra.features import jobs as fv_jobs
from mlinfra.k8s import syncjobs
from mlinfra.registry import jobs as mr_jobs
from mlinfra.vectors import jobs as vi_jobs

# Names chosen to collide if the kind were not told apart: one kind's name ending in another kind's suffix,
# names at the length limits (truncated with a digest), hyphens everywhere.
NAMES = [
    "x",
    "a",
    "a-index",
    "a-materialize",
    "a-index-sync",
    "a-lineage",
    "a-sync",
    "x-sync-1",
    "m" * 40,
    "m" * 41,
    "n" * 63,
    "n" * 200,
    "a-" * 30 + "b",
]
CRONJOB_NAMES = (fv_jobs.cronjob_name, vi_jobs.cronjob_name, mr_jobs.cronjob_name)


def test_cronjob_names_differ_across_kinds_for_any_pair_of_names() -> None:
    made = {(kind, name): f(name) for kind, f in enumerate(CRONJOB_NAMES) for name in NAMES}
    assert all(len(n) <= 52 for n in made.values())
    for (k1, n1), (k2, n2) in itertools.combinations(made, 2):
        if k1 != k2:
            assert made[(k1, n1)] != made[(k2, n2)], (n1, n2)


def test_cronjob_names_are_the_ones_from_before() -> None:
    # Not renamed (an upgrade finds them): <name>-<suffix> per kind.
    assert (fv_jobs.cronjob_name("v"), vi_jobs.cronjob_name("v"), mr_jobs.cronjob_name("v")) == (
        "v-materialize",
        "v-index-sync",
        "v-lineage",
    )


def test_a_featureview_and_a_vectorindex_of_one_name_get_different_jobs_for_one_request() -> None:
    for name in NAMES:
        for requested in ("now-1", "2026-01-01T00:00:00Z", ""):
            fv, vi = fv_jobs.ondemand_job_name(name, requested), vi_jobs.ondemand_job_name(name, requested)
            assert fv != vi, (name, requested)
            assert len(fv) <= 63 and len(vi) <= 63


def test_on_demand_job_names_are_deterministic_per_request_and_differ_per_object() -> None:
    assert vi_jobs.ondemand_job_name("x", "now-1") == vi_jobs.ondemand_job_name("x", "now-1")
    assert vi_jobs.ondemand_job_name("x", "now-1") != vi_jobs.ondemand_job_name("x", "now-2")
    made = [f(name, "now-1") for f in (fv_jobs.ondemand_job_name, vi_jobs.ondemand_job_name) for name in NAMES]
    assert len(set(made)) == len(made)


def test_the_featureviews_on_demand_job_name_is_unchanged() -> None:
    # A Job started before the upgrade is the same Job after it: the digest is still of the value alone.
    digest = hashlib.sha256(b"before-upgrade").hexdigest()[:8]
    assert fv_jobs.ondemand_job_name("clicks", "before-upgrade") == f"clicks-sync-{digest}"
    assert syncjobs.ondemand_job_name(syncjobs.FEATUREVIEW_LABEL, "clicks", "before-upgrade") == f"clicks-sync-{digest}"


def test_the_job_manifests_carry_their_kinds_names() -> None:
    owner = {"apiVersion": "mlinfra.io/v1alpha1", "kind": "X", "name": "x", "uid": "u", "controller": True}
    job = syncjobs.SyncJob(vi_jobs.KIND_LABEL, "x", "ml", ("sync",), "SPEC", {}, (), "index-sync")
    assert syncjobs.ondemand_job(job, "img", owner, "now-1")["metadata"]["name"] == vi_jobs.ondemand_job_name(
        "x", "now-1"
    )
