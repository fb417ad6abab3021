"""scikit-learn's own tests of its MLP, run on fusenn.sklearn.

The installed scikit-learn's sklearn/neural_network/tests/test_mlp.py is
copied with one line changed, the import of MLPClassifier and MLPRegressor,
and run with pytest in a subprocess (with scikit-learn's global_random_seed
fixture at its default, 42). Every test passes.
"""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sklearn = pytest.importorskip("sklearn")

IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
CONFTEST = '''import pytest


@pytest.fixture
def global_random_seed():  # scikit-learn's fixture, at its default seed
    return 42
'''


def test_sklearn_mlp_test_file_passes(tmp_path):
    source = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
    if not source.exists():
        pytest.skip("this scikit-learn was installed without its tests")
    text = source.read_text()
    assert text.count(IMPORT + "\n") == 1, "scikit-learn's test file imports its MLP otherwise"
    (tmp_path / "test_mlp.py").write_text(
        text.replace(IMPORT, "from fusenn.sklearn import MLPClassifier, MLPRegressor"))
    (tmp_path / "conftest.py").write_text(CONFTEST)
    report = tmp_path / "report.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--junitxml={report}", "test_mlp.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {}
    for case in cases:
        bad = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcomes[case.get("name")] = "failed" if bad else "skipped" if skipped else "passed"
    failed = {name.split("[")[0] for name, outcome in outcomes.items() if outcome == "failed"}
    assert not failed, run.stdout[-5000:]
    passed = sum(outcome == "passed" for outcome in outcomes.values())
    skipped = sum(outcome == "skipped" for outcome in outcomes.values())  # without pandas: 1
    assert passed == len(outcomes) - skipped
    if sklearn.__version__.startswith("1.9."):  # the file this was written against: 59 tests
        assert len(outcomes) == 59
