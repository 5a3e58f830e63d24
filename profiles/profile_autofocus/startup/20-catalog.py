# Every run goes to the catalogue: a folder (embedded, the default ./autofocus-data) or a
# Tiled server URL in AUTOFOCUS_CATALOG (API key in TILED_API_KEY).
from autofocus_plans import open_catalog, subscribe_catalog

catalog = open_catalog()  # AUTOFOCUS_CATALOG or ./autofocus-data
subscribe_catalog(RE, catalog, cameras=[camera])  # noqa: F821 (RE, camera from 00/10)
