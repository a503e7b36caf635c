"""/api/v1/profiles"""

from certctl.api.crud import crud_router
from certctl.domain.models.profiles import CertificateProfile, ProfileCreate, ProfileUpdate

router = crud_router(
    prefix="/api/v1/profiles", tag="Profiles", service=lambda s: s.profiles,
    model=CertificateProfile, create_model=ProfileCreate, update_model=ProfileUpdate,
)
