"""Every registered head, built-in or from an installed plugin, passes the same kit plugin authors use.

The parametrization comes from the registry itself, so a newly installed plugin is tested without anyone
listing it here.
"""

from __future__ import annotations

import pytest

from headreg import list_heads
from headreg.testing import CHECK_ARCHITECTURES, CHECK_TEXTS, EXPORT_ARCHITECTURES, registered_heads

BUILTINS = {"seq_cls", "multi_label", "regression", "token_cls"}


def test_the_parametrization_covers_built_ins_and_installed_plugins():
    names = registered_heads()
    assert BUILTINS <= set(names)
    assert names == [spec.name for spec in list_heads()]


@pytest.mark.parametrize("name", registered_heads())
def test_registered_head_passes_the_kit(name, check_head):
    reports = check_head(name)
    assert [report.architecture for report in reports] == list(CHECK_ARCHITECTURES)
    assert all(report.losses[-1] < report.losses[0] for report in reports)
    exported = [report for report in reports if report.bundle_dir is not None]
    assert [report.architecture for report in exported] == list(EXPORT_ARCHITECTURES)
    assert all(len(report.predictions) == len(CHECK_TEXTS) for report in exported)


@pytest.mark.parametrize("name", registered_heads())
def test_declared_result_fields_read_as_arrow_types(name):
    """Ray's Arrow batches type each result column from the head's declared Spark DDL: every installed head's
    declaration must read as one (a type arrow_type cannot read would fail the first Ray batch, not here)."""
    pytest.importorskip("pyarrow")
    from headreg import get_head
    from headreg.integrations import arrow_type

    for field, ddl in (get_head(name).fields or {}).items():
        assert arrow_type(ddl) is not None, (name, field)


def test_arrow_type_reads_spark_ddl_and_names_what_it_cannot():
    pa = pytest.importorskip("pyarrow")
    from headreg.integrations import arrow_type

    assert arrow_type("array<struct<label:string,path:array<int>>>") == pa.list_(
        pa.struct([("label", pa.string()), ("path", pa.list_(pa.int32()))]))
    assert arrow_type("map<string,double>") == pa.map_(pa.string(), pa.float64())
    for ddl, message in (("array<varchar>", "'varchar' is none of"), ("struct<a:int", "end with '>'"),
                         ("int int", "goes on after")):
        with pytest.raises(ValueError, match=message):
            arrow_type(ddl)
