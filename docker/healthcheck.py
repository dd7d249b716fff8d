"""Docker HEALTHCHECK: exit 0 while the service's liveness file is fresh, 1 when it is stale or missing."""

import sys

from image_grouping.config import load_settings
from image_grouping.consumer.liveness import check_liveness

if __name__ == "__main__":
    settings = load_settings()
    healthy, reason = check_liveness(settings.liveness_file, settings.liveness_max_age_seconds)
    print(reason)
    sys.exit(0 if healthy else 1)
