"""Checks that depend only on the config, the models and a run's arguments, made before the
first stage runs (DESIGN.md, "Bad input").

Without them a unit index out of range, an unknown part or an empty label folder was found
only after stages 1-2 had run, and a read-only or mistyped artifact root only at the first
write. ``preflight`` is called by every flow before it records the run, and by the command
line before it starts Prefect, so a mistake costs seconds and leaves the artifact root as it
was. Every problem is a ``PreflightError`` (a ``ConfigError``) naming the field, file or
argument and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linkstyle_core.config import AnalysisConfig, ConfigError, resolve_units

if TYPE_CHECKING:  # torch is imported only by the checks that need the models
    from tasks.context import Models

STAGES = ("paired", "link", "tune", "score", "validate")


class PreflightError(ConfigError):
    """A config, model or argument problem found before any stage ran."""


def check_protocol(uri: str) -> tuple[Any, str]:
    """(filesystem, path) of the artifact root ``uri``; ``PreflightError`` if its fsspec
    protocol is unknown or its package (s3fs, gcsfs, ...) is not installed."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as exc:  # e.g. s3:// without s3fs: fsspec says which package to install
        raise PreflightError(f"artifact_root {uri!r}: {exc}; install it (e.g. `pip install "
                             "s3fs` for s3://, gcsfs for gs://) or use a local folder") from None
    except ValueError as exc:  # "Protocol not known: ..."
        known = ", ".join(sorted(p for p in fsspec.available_protocols()
                                 if p in ("file", "memory", "s3", "gs", "az", "abfs", "hdfs")))
        raise PreflightError(f"artifact_root {uri!r}: {exc}; use a local folder or a URI of an "
                             f"fsspec protocol ({known}, ...)") from None


REMOTE_CHECK_S = 20.0  # how long the look at a remote root may take before it is given up


def _s3_credentials(uri: str, fs: Any) -> None:
    """``PreflightError`` unless credentials for ``s3://`` can be found without a network call:
    the environment, the shared credentials and config files, SSO, a credential process, a
    container's role. Instance metadata (an EC2 role) is asked only when
    ``AWS_EC2_METADATA_DISABLED=false`` says so: outside a cloud its look-ups wait on
    connections that never answer, and a run without credentials failed only after minutes."""
    if getattr(fs, "anon", False) or getattr(fs, "key", None):
        return  # anonymous access, or a key given to the file system itself
    import botocore.session

    session = botocore.session.Session(profile=getattr(fs, "profile", None) or None)
    resolver = session.get_component("credential_provider")
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "false":
        resolver.remove("iam-role")
    try:
        found = resolver.load_credentials()
    except Exception as exc:  # a broken profile, an expired SSO token...
        raise PreflightError(f"artifact_root {uri}: the AWS credentials cannot be read "
                             f"({type(exc).__name__}: {exc}); fix them (`aws configure`) or use "
                             "a local folder") from None
    if found is None:
        raise PreflightError(
            f"artifact_root {uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (with AWS_ENDPOINT_URL for MinIO or another S3-compatible "
            "store), or AWS_PROFILE with `aws configure`; on an EC2 instance with a role set "
            "AWS_EC2_METADATA_DISABLED=false; or use a local folder")


def check_remote_root(uri: str) -> None:
    """A remote artifact root (s3://, gs://, ...) can be reached: credentials first (s3), then
    one bounded look at it (``REMOTE_CHECK_S``), so a run without access fails in seconds
    with one message instead of after its first stages. Local and memory roots pass."""
    import threading

    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    fs, path = check_protocol(uri)
    if isinstance(fs, LocalFileSystem | MemoryFileSystem) or uri in _REACHED:
        return
    protocols = set(fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,))
    if "s3" in protocols:
        _s3_credentials(uri, fs)
    bucket = path.split("/")[0] if protocols & {"s3", "s3a", "gs", "gcs"} else None
    outcome: list[BaseException | bool] = []

    def look() -> None:
        try:
            if bucket:
                try:
                    outcome.append(fs.exists(bucket))
                    return
                except PermissionError:
                    pass  # credentials that may not look at the bucket may still write the root
            fs.exists(path)
            outcome.append(True)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=look, name="linkstyle-root-check", daemon=True)
    thread.start()
    thread.join(REMOTE_CHECK_S)
    if not outcome:
        raise PreflightError(f"artifact_root {uri}: no answer within {REMOTE_CHECK_S:.0f} s; "
                             "check the network, the endpoint (AWS_ENDPOINT_URL) and the "
                             "bucket name, or use a local folder")
    found = outcome[0]
    if isinstance(found, BaseException):
        raise PreflightError(f"artifact_root {uri} cannot be reached ({type(found).__name__}: "
                             f"{found}); check the credentials, the endpoint and the bucket, or "
                             "use a local folder") from None
    if not found:
        raise PreflightError(f"artifact_root {uri}: the bucket {bucket!r} does not exist, or "
                             "these credentials cannot see it; create it, fix its name, or "
                             "check the endpoint (AWS_ENDPOINT_URL)")
    _REACHED.add(uri)


_REACHED: set[str] = set()  # remote roots checked in this process


def _dangling_link(root: Path) -> Path | None:
    """The first of ``root`` and its parents that is a symbolic link to nothing, if any."""
    for candidate in (root, *root.parents):
        if candidate.is_symlink() and not candidate.exists():
            return candidate
    return None


def check_artifact_root(uri: str) -> None:
    """The artifact root can be used: its fsspec protocol is known and installed, a remote one
    can be reached (``check_remote_root``), and a local root is a folder (or can be created as
    one) that this process may write. Creates nothing."""
    from fsspec.implementations.local import LocalFileSystem

    fs, path = check_protocol(uri)
    if not isinstance(fs, LocalFileSystem):
        check_remote_root(uri)
        return
    root = Path(path)
    link = _dangling_link(root)
    if link is not None:
        raise PreflightError(f"artifact_root {uri}: {link} is a symbolic link to "
                             f"{os.readlink(link)}, which does not exist; create that folder, "
                             "fix the link, or choose another artifact root")
    if root.exists():
        if not root.is_dir():
            raise PreflightError(f"artifact_root {uri} is a file, not a folder; point "
                                 "artifact_root (or --root) at a folder")
        if not os.access(root, os.W_OK | os.X_OK):
            raise PreflightError(f"artifact_root {uri} is not writable by this user; fix its "
                                 "permissions or choose another folder")
        return
    parent = root.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PreflightError(f"artifact_root {uri} cannot be created: {parent} is a file; "
                             "choose a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PreflightError(f"artifact_root {uri} cannot be created: {parent} is not writable "
                             "by this user; create the folder with the right permissions or "
                             "choose another one")


def _check_pair_arguments(origin: int | None, target: int | None) -> None:
    """Both or neither of --origin and --target, and not the same class."""
    if (origin is None) != (target is None):
        given, missing = ("--origin", "--target") if target is None else ("--target", "--origin")
        raise PreflightError(f"{given} without {missing}: give both --origin and --target "
                             "(different classes), or neither for every pair of the configured "
                             "classes")
    if origin is not None and origin == target:
        raise PreflightError(f"--origin and --target are both {origin}; a counterfactual moves "
                             "a sample to a different class")


def class_pairs(config: AnalysisConfig, models: Models, origin: int | None,
                target: int | None) -> list[tuple[int, int]]:
    """One (origin, target) pair, or every ordered pair of the configured classes."""
    from tasks.context import resolve_classes

    classes = resolve_classes(config, models)
    _check_pair_arguments(origin, target)
    if origin is None or target is None:
        if len(classes) < 2:
            raise PreflightError(f"counterfactuals need two classes, data.classes has "
                                 f"{classes}; configure at least two")
        return [(a, b) for a in classes for b in classes if a != b]
    for flag, c in (("--origin", origin), ("--target", target)):
        if c not in classes:
            raise PreflightError(f"{flag} {c} is not among the configured classes "
                                 f"(data.classes: {classes}); pick one of them")
    return [(origin, target)]


def _check_segment(config: AnalysisConfig, models: Models) -> None:
    """The segmenter's labelled images exist and fit the part list and the generator."""
    from linkstyle_core.labels import LabelError, load_folder, read_parts

    seg, gen = config.segment, models.generator
    if not seg.labels:
        if config.generator.kind != "toy":
            raise PreflightError(
                "segment.labels is required for a generator other than the toy world: run "
                "`linkstyle labels export --out DIR`, label the images, `linkstyle labels "
                "import DIR`, then set segment.labels: DIR")
        from linkstyle_core.toyworld.factors import PARTS

        if seg.parts is not None and list(seg.parts) != list(PARTS):
            unknown = [p for p in seg.parts if p not in PARTS]
            which = f"unknown part(s) {unknown}" if unknown else "a different order"
            raise PreflightError(f"segment.parts {list(seg.parts)} has {which}; the toy world's "
                                 f"parts are {list(PARTS)}: leave segment.parts unset or list "
                                 "exactly these")
        return
    folder = Path(seg.labels)
    if folder.is_dir() and (folder / "parts.json").exists():
        read_parts(folder)  # a parts.json that is not valid JSON is named as such
    ws, labels, parts, _ = load_folder(folder)
    if seg.parts is not None and list(seg.parts) != parts:
        unknown = [p for p in seg.parts if p not in parts]
        which = f"unknown part(s) {unknown}" if unknown else "a different order"
        raise PreflightError(f"segment.parts {list(seg.parts)} has {which}; the label folder "
                             f"{folder} has {parts}: make them agree (or leave segment.parts "
                             "unset)")
    if tuple(ws.shape[1:]) != (gen.num_ws, gen.w_dim):
        raise LabelError(f"{folder}: its latents have shape {tuple(ws.shape[1:])} per image, the "
                         f"generator's are ({gen.num_ws}, {gen.w_dim}); export the folder again "
                         "with this generator")
    if tuple(labels.shape[1:]) != (gen.resolution, gen.resolution):
        raise LabelError(f"{folder}: its masks are {labels.shape[2]}x{labels.shape[1]}, the "
                         f"generator renders {gen.resolution}x{gen.resolution}; export the folder "
                         "again with this generator")
    if int(labels.min()) < 0 or int(labels.max()) >= len(parts):
        raise LabelError(f"{folder}: its masks use label {int(labels.max())} but parts.json "
                         f"names {len(parts)} parts; run `linkstyle labels import {folder}` again")


def preflight(config: AnalysisConfig, until: str = "score", origin: int | None = None,
              target: int | None = None, counterfactual: bool = False) -> Models:
    """Check everything stages 1 to ``until`` (and counterfactuals between ``origin`` and
    ``target``, if ``counterfactual``) need that does not depend on their results; return the
    loaded models. Raises ``ConfigError`` (``PreflightError``, ``LabelError``, ``ModelError``)
    naming the field, file or argument and the fix. Reads; writes nothing."""
    from linkstyle_core.runtime import resolve_device
    from tasks.context import models_for, resolve_classes

    if until not in STAGES:
        raise PreflightError(f"until must be one of {', '.join(STAGES)}, got {until!r}")
    stages = STAGES[:STAGES.index(until) + 1]
    if counterfactual:
        _check_pair_arguments(origin, target)
    check_artifact_root(config.artifact_root)
    resolve_device(config.runtime.device)
    if "validate" in stages and config.generator.kind != "toy":
        raise PreflightError("ground-truth validation needs the toy world (generator.kind "
                             "'toy'): only there are the true factors known; a classifier of "
                             "the toy species (classifier.kind 'toy' with or without weights, "
                             "or 'python') can be validated")
    models = models_for(config)  # ModelError: a model that cannot be loaded or does not fit
    resolve_classes(config, models)
    held_out = config.data.test_samples_per_class
    if counterfactual:
        class_pairs(config, models, origin, target)  # the classes are configured ones
        if config.counterfactual.samples > held_out:
            raise PreflightError(f"counterfactual.samples ({config.counterfactual.samples}) "
                                 f"exceeds data.test_samples_per_class ({held_out}): "
                                 "counterfactuals start from held-out samples; lower the one "
                                 "or raise the other")
    if "tune" in stages:
        resolve_units(config.tuning.units, models.classifier.feature_dim)
        if config.tuning.samples_per_class > held_out:
            raise PreflightError(f"tuning.samples_per_class ({config.tuning.samples_per_class}) "
                                 f"exceeds data.test_samples_per_class ({held_out}): tuning "
                                 "uses held-out samples; lower the one or raise the other")
        _check_segment(config, models)
    return models
