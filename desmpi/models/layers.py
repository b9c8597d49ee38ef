"""Dense parameters in one flat vector, and dense layers with explicit backward."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from desmpi.kernels.dense import bias_act, relu_grad
from desmpi.workspace import Workspace


class Params:
    """Named views into one flat parameter vector and its gradient.

    One buffer makes the dense gradient a single Allreduce and the optimizer one vector op.
    Add every parameter, then :meth:`build`; initial values come from ``rng`` in the order of
    ``add`` calls, so they are the same on every rank. ``ws`` holds the step's scratch arrays
    (:mod:`desmpi.workspace`; the trainer sets one that reuses them across steps).
    With ``timing`` on, :meth:`matmul` (every product with a 2-D weight goes through it) and
    :meth:`add_time` accumulate seconds per kind in ``times`` (``desmpi bench train``).
    """

    def __init__(self, dtype, rng: np.random.Generator) -> None:
        self.dtype = np.dtype(dtype)
        self.rng = rng
        self._specs: list[tuple[str, tuple[int, ...], np.ndarray]] = []
        self.offsets: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self.data = np.empty(0, dtype=self.dtype)
        self.grads = np.empty(0, dtype=self.dtype)
        self.ws = Workspace(reuse=False)
        self.timing = False
        self.times: defaultdict[str, float] = defaultdict(float)

    def add(self, name: str, shape: tuple[int, ...], init: str = "zeros",
            fan: tuple[int, int] | None = None) -> None:
        if name in self.offsets or any(s[0] == name for s in self._specs):
            raise ValueError(f"parameter {name} added twice")
        if init == "glorot":
            fi, fo = fan if fan is not None else (shape[0], shape[-1])
            a = np.sqrt(6.0 / (fi + fo))
            v = self.rng.uniform(-a, a, size=shape)
        elif init == "zeros":
            v = np.zeros(shape)
        else:
            raise ValueError(init)
        self._specs.append((name, tuple(shape), v))

    def build(self) -> None:
        n = sum(int(np.prod(s)) for _, s, _ in self._specs)
        self.data = np.empty(n, dtype=self.dtype)
        self.grads = np.zeros(n, dtype=self.dtype)
        o = 0
        for name, shape, v in self._specs:
            m = int(np.prod(shape))
            self.offsets[name] = (o, m, shape)
            self.data[o:o + m] = v.reshape(-1)
            o += m
        self._specs = []

    @property
    def size(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, name: str) -> np.ndarray:
        o, m, shape = self.offsets[name]
        return self.data[o:o + m].reshape(shape)

    def grad(self, name: str) -> np.ndarray:
        o, m, shape = self.offsets[name]
        return self.grads[o:o + m].reshape(shape)

    def zero_grad(self) -> None:
        self.grads[...] = 0

    def scratch(self, name: str, shape: tuple[int, ...], zero: bool = False) -> np.ndarray:
        """A scratch array of this dtype from ``ws`` (contents undefined unless ``zero``)."""
        return (self.ws.zeros if zero else self.ws.take)(name, shape, self.dtype)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = a @ b, one BLAS call (timed as "gemm" when ``timing``); returns out."""
        if not self.timing:
            return np.matmul(a, b, out=out)
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        self.add_time("gemm", t0)
        return out

    def add_time(self, kind: str, t0: float) -> None:
        """times[kind] += now - t0 (when ``timing``)."""
        if self.timing:
            self.times[kind] += time.perf_counter() - t0

    def add_product(self, name: str, a: np.ndarray, b: np.ndarray) -> None:
        """grad(name) += a @ b, the product through a scratch array (one BLAS call; one array
        for every parameter: it stays in cache)."""
        g = self.grad(name)
        tmp = self.scratch("add_product", g.shape)
        self.matmul(a, b, tmp)
        g += tmp


class Dense:
    """y = x W + b with W: (n_in, n_out)."""

    def __init__(self, params: Params, name: str, n_in: int, n_out: int) -> None:
        self.w, self.b = f"{name}.w", f"{name}.b"
        params.add(self.w, (n_in, n_out), "glorot")
        params.add(self.b, (n_out,))

    def forward(self, p: Params, x: np.ndarray, relu: bool = False) -> np.ndarray:
        """x (n, n_in) -> (n, n_out) (scratch ``<w>:y``): one GEMM, then bias (and ReLU) in one
        in-place pass."""
        w = p[self.w]
        y = p.matmul(x, w, p.scratch(self.w + ":y", (x.shape[0], w.shape[1])))
        bias_act(y, p[self.b], relu)
        return y

    def backward(self, p: Params, x: np.ndarray, gy: np.ndarray, need_gx: bool = True,
                 bias_done: bool = False, gx_name: str | None = None) -> np.ndarray | None:
        """Adds the weight and bias gradients (the bias's unless ``bias_done``: added by the
        ReLU backward pass); returns gx = gy Wᵀ (scratch ``gx_name``, default ``<w>:gx``)
        when ``need_gx``."""
        p.add_product(self.w, x.T, gy)
        if not bias_done:
            p.grad(self.b)[...] += gy.sum(axis=0)
        if not need_gx:
            return None
        w = p[self.w]
        out = p.scratch(gx_name or self.w + ":gx", (gy.shape[0], w.shape[0]))
        return p.matmul(gy, w.T, out)


class MLP:
    """Dense layers with ReLU between them (and after the last when ``final_relu``)."""

    def __init__(self, params: Params, name: str, dims: list[int], final_relu: bool) -> None:
        self.layers = [Dense(params, f"{name}{i}", a, b)
                       for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
        self.final_relu = final_relu
        self.name = name

    def forward(self, p: Params, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        acts = [x]
        for i, layer in enumerate(self.layers):
            acts.append(layer.forward(p, acts[-1],
                                      relu=i < len(self.layers) - 1 or self.final_relu))
        return acts[-1], acts

    def backward(self, p: Params, acts: list[np.ndarray], gy: np.ndarray,
                 need_gx: bool = True) -> np.ndarray | None:
        g = gy
        if self.final_relu:  # the caller's gy is not modified
            g = p.scratch(self.name + ":g", gy.shape)
            g[...] = gy
        for i in range(len(self.layers) - 1, -1, -1):
            relu = i < len(self.layers) - 1 or self.final_relu
            if relu:  # g is ours (the next layer's fresh gx); bias gradient in the same pass
                relu_grad(g, acts[i + 1], p.grad(self.layers[i].b))
            # input gradients in two arrays taken in turn (each is dead two layers on):
            # the memory just written is read next, from cache
            g = self.layers[i].backward(p, acts[i], g, need_gx=need_gx or i > 0,
                                        bias_done=relu, gx_name=f"{self.name}:gx{i % 2}")
        return g
