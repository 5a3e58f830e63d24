# Every run goes to the catalogue: a folder (embedded, the default ./autofocus-data) or a
# Tiled server URL in AUTOFOCUS_CATALOG (API key in TILED_API_KEY). Should it not open,
# connect_catalog says why in one sentence, sets catalog = None and makes RE refuse plans
# that start a run (nothing is measured unrecorded) until a later connect_catalog succeeds;
# the session and the plans still load.
from autofocus_plans.session import connect_catalog

catalog = connect_catalog(RE, cameras=[camera])  # noqa: F821 (RE, camera from 00/10)
