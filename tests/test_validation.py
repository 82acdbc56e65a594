import math

import numpy as np
import pytest
import torch

from flbook import validation as V


@pytest.mark.parametrize("check, args, error, message", [
    (V.positive, ("alpha", math.nan), ValueError, "alpha must be a finite number > 0, got nan"),
    (V.positive, ("alpha", math.inf), ValueError, "alpha must be a finite number > 0, got inf"),
    (V.positive, ("alpha", 0), ValueError, "alpha must be a finite number > 0, got 0"),
    (V.positive, ("lr", "0.1"), TypeError, r"lr must be a real number, got '0.1' \(str\)"),
    (V.non_negative, ("mu", -1.0), ValueError, "mu must be a finite number >= 0, got -1.0"),
    (V.finite, ("gap", -math.inf), ValueError, "gap must be a finite number, got -inf"),
    (V.probability, ("p", 1.5), ValueError, r"p must be in \[0, 1\], got 1.5"),
    (V.probability, ("p", 0.0, ), None, None),
    (V.in_range, ("m", 1.0, 0, 1), None, None),
    (V.integer, ("n", 2.5), ValueError, "n must be an integer, got 2.5"),
    (V.integer, ("n", True), TypeError, r"n must be an integer, got True \(bool\)"),
    (V.integer, ("n", None), TypeError, r"n must be an integer, got None"),
    (V.integer, ("n", 0, 1), ValueError, "n must be an integer >= 1, got 0"),
    (V.integer, ("n", 7, 1, 6), ValueError, r"n must be an integer in \[1, 6\], got 7"),
    (V.seed, (-1,), ValueError, r"seed must be an integer in \[0, 9223372036854775807\], got -1"),
    (V.seed, (2**64,), ValueError, "seed must be an integer in"),
    (V.choice, ("kind", "blur", ("noise", "rotation")), ValueError, r"kind must be one of \('noise', 'rotation'\)"),
])
def test_each_error_names_the_parameter_the_range_and_the_value(check, args, error, message):
    if error is None:
        check(*args)
        return
    with pytest.raises(error, match=message):
        check(*args)


def test_values_come_back_as_plain_python_numbers():
    assert V.integer("n", np.int64(3)) == 3 and type(V.integer("n", np.int64(3))) is int
    assert V.integer("n", 4.0) == 4 and V.seed(np.uint8(7)) == 7
    assert type(V.positive("lr", np.float32(0.5))) is float


def test_in_range_admits_an_infinite_end_only_when_told():
    assert V.in_range("snr_db", math.inf, -100, math.inf, hi_inclusive=True) == math.inf
    with pytest.raises(ValueError, match=r"snr_db must be in \[-100, inf\], got nan"):
        V.in_range("snr_db", math.nan, -100, math.inf, hi_inclusive=True)
    with pytest.raises(ValueError, match=r"m must be in \[0, 1\), got 1"):
        V.in_range("m", 1, 0, 1, hi_inclusive=False)


def test_index_arrays_refuse_masks_floats_and_out_of_range_indices():
    assert V.index_array("p", torch.tensor([2, 0]), 3).dtype == np.int64
    assert len(V.index_array("p", [], 3)) == 0
    with pytest.raises(TypeError, match="boolean mask"):
        V.index_array("p", np.array([True, False, True]), 3)
    with pytest.raises(TypeError, match="float64"):
        V.index_array("p", np.array([0.5, 1.7]), 3)
    with pytest.raises(ValueError, match=r"p must hold indices in \[0, 3\), got values in \[-1, 1\]"):
        V.index_array("p", np.array([-1, 1]), 3)
    with pytest.raises(ValueError, match="1-D"):
        V.index_array("p", np.arange(4).reshape(2, 2), 5)


def test_finite_values_counts_and_locates_the_first_bad_entry_in_every_chunk():
    x = torch.zeros(3, 4)
    x[1, 2], x[2, 0] = math.nan, math.inf
    for chunk in (5, 2**22):
        with pytest.raises(ValueError, match=r"x must hold only finite values, got 2 NaN or inf entries "
                                             r"\(the first at index \(1, 2\): nan\)"):
            V.finite_values("x", x, chunk=chunk)
    V.finite_values("y", torch.arange(5))  # integer tensors are always finite
