"""Saving and loading models: one .npz file, written atomically, never pickled.

A file holds "fusenn_format" (the version below), "config" (the model's
config() as JSON: layers, input shape, dtype, loss, optimizer), and the arrays:
param_<i> (get_weights' trainable arrays in order), buffer_<i> (BatchNorm's
running statistics) and opt_<state>_<i> (the optimizer's state per parameter).

Versions: 1 (fusenn 0.1: flat inputs, "input_dim" in the config) and 2 (a
sample's shape, "input_shape"); both load.
"""

import json
import os
import tempfile

import numpy as np

__all__ = ["FORMAT_VERSION", "save", "load"]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def save(model, path):
    """Write `model` to `path` (see Sequential.save)."""
    model._require_built()
    arrays = {"fusenn_format": np.array(FORMAT_VERSION),
              "config": np.array(json.dumps(model.config()))}
    for i, p in enumerate(model.params):
        arrays[f"param_{i}"] = p
    for i, a in enumerate(model.buffers):
        arrays[f"buffer_{i}"] = a
    if model.optimizer is not None and model.optimizer.state is not None:
        for name, states in model.optimizer.state.items():
            for i, s in enumerate(states):
                arrays[f"opt_{name}_{i}"] = s
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def _atomic_write(path, write):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load(path):
    """Read a model written by Sequential.save. Never unpickles anything."""
    from .layers import layer_from_config
    from .model import Sequential

    def bad(why):
        return ValueError(f"{os.fspath(path)!s} is not a valid fusenn model file: {why}")

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # truncated zip, wrong format, pickled content...
        raise bad(f"{type(exc).__name__}: {exc}") from None
    if "fusenn_format" not in arrays or "config" not in arrays:
        raise bad("missing 'fusenn_format' or 'config'")
    version = arrays["fusenn_format"]
    if version.shape != () or version.dtype.kind not in "iu":
        raise bad("corrupt format version")
    if int(version) not in READABLE_VERSIONS:
        raise bad(f"format version {int(version)}, this fusenn reads versions "
                  f"{', '.join(map(str, READABLE_VERSIONS))}")
    try:
        config = json.loads(str(arrays["config"]))
        layers = [layer_from_config(spec) for spec in config["layers"]]
        shape = (config["input_shape"] if int(version) >= 2 else config["input_dim"])
        model = Sequential(layers, input_shape=shape, dtype=config["dtype"],
                           seed=config["seed"], backend=config["backend"])
        if config["loss"] is not None:
            model.compile(config["loss"], config["optimizer"])
    except (ValueError, TypeError, KeyError) as exc:
        raise bad(f"bad config ({type(exc).__name__}: {exc})") from None
    params = model.params
    for kind, targets in (("param", params), ("buffer", model.buffers)):
        for i, a in enumerate(targets):
            key = f"{kind}_{i}"
            saved = arrays.get(key)
            if saved is None or saved.shape != a.shape or saved.dtype != a.dtype:
                raise bad(f"{key} is missing or does not match the config "
                          f"(expected {a.dtype} {a.shape})")
            if not np.all(np.isfinite(saved)):
                raise bad(f"{key} contains NaN or infinity")
            a[...] = saved
    if any(label.startswith("running_var") and np.any(a < 0) for label, a in model._weight_arrays()):
        raise bad("a BatchNorm running variance is negative")
    opt = model.optimizer
    if opt is not None:
        opt.iterations = int(config.get("optimizer_iterations", 0))
        if any(key.startswith("opt_") for key in arrays):
            state = {}
            for name in opt._state_names:
                states = [arrays.get(f"opt_{name}_{i}") for i in range(len(params))]
                if any(s is None or s.shape != p.shape or s.dtype != p.dtype
                       for s, p in zip(states, params)):
                    raise bad(f"optimizer state {name!r} is missing or mismatched")
                state[name] = [s.copy() for s in states]
            opt.state = state
            opt.ensure_state(params, model._arena)  # into the model's state arenas
    return model
