"""/api/v1/owners"""

from certctl.api.crud import crud_router
from certctl.domain.models.org import Owner, OwnerCreate, OwnerUpdate

router = crud_router(
    prefix="/api/v1/owners", tag="Owners", service=lambda s: s.owners,
    model=Owner, create_model=OwnerCreate, update_model=OwnerUpdate,
)
