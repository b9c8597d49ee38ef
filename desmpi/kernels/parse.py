"""Delimited-text CTR parser over raw bytes (one pass, no Python per line).

Status codes per line (0 = good); the reader turns them into messages with file and line.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from desmpi.kernels.hashing import FIELD_SHIFT, MISSING_BIT, VALUE_MASK

OK, BAD_FIELDS, BAD_LABEL, BAD_DENSE, BAD_CATEGORY, BAD_BYTES = 0, 1, 2, 3, 4, 5
BAD_NONFINITE = 6  # a dense value past float32's range, inf or nan
BLANK = 7  # an empty line: neither data nor malformed (the reader counts it apart)
REASONS = {
    BAD_FIELDS: "wrong number of fields",
    BAD_LABEL: "label is not 0 or 1",
    BAD_DENSE: "dense value is not a number",
    BAD_CATEGORY: "categorical value is not hexadecimal",
    BAD_BYTES: "undecodable bytes (not UTF-8)",
    BAD_NONFINITE: "dense value overflows or is not finite",
}
ROLE_SKIP, ROLE_LABEL, ROLE_DENSE, ROLE_CAT = 0, 1, 2, 3
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True)
def _parse_number(buf, a, b):
    """Parse a decimal (sign, digits, '.', digits, exponent) in buf[a:b]. Returns (ok, value)."""
    i = a
    neg = False
    if i < b and (buf[i] == 45 or buf[i] == 43):  # '-' '+'
        neg = buf[i] == 45
        i += 1
    mant = 0.0
    nd = 0
    while i < b and 48 <= buf[i] <= 57:
        mant = mant * 10.0 + (buf[i] - 48)
        i += 1
        nd += 1
    scale = 0
    if i < b and buf[i] == 46:  # '.'
        i += 1
        while i < b and 48 <= buf[i] <= 57:
            mant = mant * 10.0 + (buf[i] - 48)
            scale -= 1
            i += 1
            nd += 1
    if nd == 0:
        return False, 0.0
    if i < b and (buf[i] == 101 or buf[i] == 69):  # 'e' 'E'
        i += 1
        eneg = False
        if i < b and (buf[i] == 45 or buf[i] == 43):
            eneg = buf[i] == 45
            i += 1
        e = 0
        ne = 0
        while i < b and 48 <= buf[i] <= 57:
            e = e * 10 + (buf[i] - 48)
            i += 1
            ne += 1
        if ne == 0:
            return False, 0.0
        scale += -e if eneg else e
    if i != b:
        return False, 0.0
    v = mant * 10.0 ** scale if scale != 0 else mant
    return True, -v if neg else v


@njit(cache=True)
def _utf8_ok(buf, a, b):
    i = a
    while i < b:
        c = buf[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            n = 1
        elif 0xE0 <= c <= 0xEF:
            n = 2
        elif 0xF0 <= c <= 0xF4:
            n = 3
        else:
            return False
        if i + n >= b:
            return False
        for j in range(1, n + 1):
            if (buf[i + j] & 0xC0) != 0x80:
                return False
        i += n + 1
    return True


@njit(cache=True)
def count_lines(buf):
    """Lines in buf: newlines, plus one for a last line without a newline."""
    n = 0
    for i in range(buf.shape[0]):
        if buf[i] == 10:
            n += 1
    if buf.shape[0] > 0 and buf[buf.shape[0] - 1] != 10:
        n += 1
    return n


@njit(cache=True)
def parse_block(buf, delim, roles, slots, hexcat, dense_log, labels, dense, keys, status, errcol):
    """Parse every line of ``buf`` (uint8) into row i of the outputs.

    roles/slots: (C,) per column: role (skip/label/dense/cat) and its index among dense or
    categorical columns. hexcat: categorical values are hex ids (Criteo) instead of hashed
    strings. Outputs, one row per line: labels (n,), dense (n, Dn) float32, keys (n, F) int64,
    status (n,) int8 (0 good, else a code of this module), errcol (n,) int32 (offending column).
    Returns the number of lines parsed.
    """
    ncols = roles.shape[0]
    n = buf.shape[0]
    line = 0
    pos = 0
    while pos < n:
        end = pos
        while end < n and buf[end] != 10:
            end += 1
        lend = end
        if lend > pos and buf[lend - 1] == 13:  # CRLF
            lend -= 1
        if lend == pos:
            status[line] = BLANK
            errcol[line] = -1
            line += 1
            pos = end + 1
            continue
        st = 0
        ec = -1
        col = 0
        a = pos
        while True:
            b = a
            while b < lend and buf[b] != delim:
                b += 1
            if col < ncols:
                role = roles[col]
                s = slots[col]
                if role == 1:
                    ok, v = _parse_number(buf, a, b)
                    if not ok or (v != 0.0 and v != 1.0):
                        if st == 0:
                            st = 2
                            ec = col
                    else:
                        labels[line] = v
                elif role == 2:
                    if b == a:
                        dense[line, s] = 0.0
                    else:
                        ok, v = _parse_number(buf, a, b)
                        if not ok:
                            if st == 0:
                                st = 3
                                ec = col
                        else:
                            if dense_log:
                                dense[line, s] = np.log1p(v) if v > 0.0 else 0.0
                            else:
                                dense[line, s] = v
                            x = dense[line, s]  # as stored: float32 overflows to inf
                            if not (x - x == 0.0) and st == 0:
                                st = BAD_NONFINITE
                                ec = col
                elif role == 3:
                    base = np.int64(s + 1) << FIELD_SHIFT
                    if b == a:
                        keys[line, s] = base | MISSING_BIT
                    elif hexcat:
                        h = np.int64(0)
                        good = b - a <= 11  # 44 bits at most, below the missing bit
                        for i in range(a, b if good else a):
                            c = buf[i]
                            if 48 <= c <= 57:
                                d = c - 48
                            elif 97 <= c <= 102:
                                d = c - 87
                            elif 65 <= c <= 70:
                                d = c - 55
                            else:
                                good = False
                                break
                            h = (h << 4) | d
                        if good:
                            keys[line, s] = base | h
                        elif st == 0:
                            st = 4
                            ec = col
                    else:
                        if not _utf8_ok(buf, a, b):
                            if st == 0:
                                st = 5
                                ec = col
                        else:
                            h = _FNV_OFFSET
                            for i in range(a, b):
                                h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
                            keys[line, s] = base | (np.int64(h & np.uint64(VALUE_MASK)))
            col += 1
            if b >= lend:
                break
            a = b + 1
        if col != ncols:
            st = 1
            ec = col
        status[line] = st
        errcol[line] = ec
        line += 1
        pos = end + 1
    return line
