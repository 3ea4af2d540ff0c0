"""The ComfyUI-FREE nodes (V1 node API): declarations and glue; the math is in free_core."""

from .conditioning import FREEClassLabel, FREEEmptyLatent
from .loaders import FREEDiTLoader, FREEDrafterLoader
from .model_folders import register_folders
from .outputs import FREECompare, FREEDecode, FREEStats
from .recording import FREERecordTrajectories
from .sampling import FREEKSampler, FREESampler
from .training import FREETrainDrafter, FREETrainTappedDrafter

register_folders()

NODE_CLASS_MAPPINGS = {
    "FREEDiTLoader": FREEDiTLoader,
    "FREEDrafterLoader": FREEDrafterLoader,
    "FREEClassLabel": FREEClassLabel,
    "FREEEmptyLatent": FREEEmptyLatent,
    "FREEKSampler": FREEKSampler,
    "FREESampler": FREESampler,
    "FREEStats": FREEStats,
    "FREECompare": FREECompare,
    "FREEDecode": FREEDecode,
    "FREETrainDrafter": FREETrainDrafter,
    "FREERecordTrajectories": FREERecordTrajectories,
    "FREETrainTappedDrafter": FREETrainTappedDrafter,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FREEDiTLoader": "FREE DiT Loader",
    "FREEDrafterLoader": "FREE Drafter Loader",
    "FREEClassLabel": "FREE Class Label",
    "FREEEmptyLatent": "FREE Empty Latent",
    "FREEKSampler": "FREE KSampler",
    "FREESampler": "FREE Sampler",
    "FREEStats": "FREE Stats",
    "FREECompare": "FREE Compare",
    "FREEDecode": "FREE Decode",
    "FREETrainDrafter": "FREE Train Drafter",
    "FREERecordTrajectories": "FREE Record Trajectories",
    "FREETrainTappedDrafter": "FREE Train Tapped Drafter",
}
