"""/api/v1/teams"""

from certctl.api.crud import crud_router
from certctl.domain.models.org import Team, TeamCreate, TeamUpdate

router = crud_router(
    prefix="/api/v1/teams", tag="Teams", service=lambda s: s.teams,
    model=Team, create_model=TeamCreate, update_model=TeamUpdate,
)
