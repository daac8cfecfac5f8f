"""Configuration objects: strict dicts, and a design record that says how to recompute itself."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL_SOAP

import mlipdoe
from mlipdoe.api import design
from mlipdoe.budget import Budget
from mlipdoe.design import read_record, write_record
from mlipdoe.exceptions import ConfigurationError
from mlipdoe.hypers import DesignConfig, ModelConfig, Noise
from mlipdoe.model.kernels import Kernel


def test_config_round_trips_through_its_dict():
    config = DesignConfig(
        model=ModelConfig(soap=SMALL_SOAP, kernel=Kernel(zeta=2, delta=0.5), observations=("Energy", "forces"),
                          noise=Noise(energy=0.002, per_config_type={"surface": {"force": 0.3}}), n_sparse={40: 7},
                          sparse_method="FPS", seed=3),
        criterion="I", budget=Budget("atoms", 200), optimizer="Exchange", restarts=2, threshold=1e-3).validate()
    assert (config.criterion, config.optimizer, config.model.sparse_method) == ("i", "exchange", "fps")
    assert config.model.observations == ("energy", "forces")
    assert DesignConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("where, data, message", [
    ("model", {"descriptor": {"cutof": 5.0}}, "unknown descriptor key 'cutof'"),
    ("model", {"kernel": {"zeta": 4, "sigma": 1}}, "unknown kernel key 'sigma'"),
    ("model", {"noise": {"energie": 0.1}}, "unknown noise key 'energie'"),
    ("model", {"n_sparce": 3}, "unknown model config key 'n_sparce'"),
    ("design", {"budget": {"kind": "count", "value": 3}, "search": {"restart": 1}}, "unknown search options key"),
])
def test_unknown_keys_are_refused_by_name(where, data, message):
    parse = ModelConfig.from_dict if where == "model" else DesignConfig.from_dict
    with pytest.raises(ConfigurationError, match=message):
        parse(data)


def test_invalid_values_are_refused():
    with pytest.raises(ConfigurationError, match="unknown criterion 'q'"):
        DesignConfig(criterion="q", budget=Budget("count", 3)).validate()
    with pytest.raises(ConfigurationError, match="observations must include energy"):
        ModelConfig(observations=("forces",)).validate()
    with pytest.raises(ConfigurationError, match="needs a budget"):
        DesignConfig().validate()
    with pytest.raises(ConfigurationError, match="needs a budget"):
        DesignConfig.from_dict({"criterion": "d"})
    with pytest.raises(ConfigurationError, match="needs a 'kind' and a 'value'"):
        DesignConfig.from_dict({"budget": {"kind": "count"}})
    assert ModelConfig(observations="energy, Forces").observations == ("energy", "forces")


def test_a_record_recomputes_its_design_bit_for_bit(zr_pool, tmp_path):
    pool = mlipdoe.api.as_pool(zr_pool)
    result = mlipdoe.select(pool, n=5, criterion="D", soap=SMALL_SOAP, n_sparse=12, seed=2, optimizer="exchange",
                            restarts=1)
    write_record(result.record, tmp_path / "design.json")
    config = DesignConfig.from_record(read_record(tmp_path / "design.json"))
    assert config.criterion == "d" and config.restarts == 1 and config.model.n_sparse == 12
    again = design(pool, config)
    assert again.selected == result.selected
    assert np.array_equal(again.gains, result.gains)
    assert again.record.sparse_points == result.record.sparse_points
