"""Model constructors ComfyUI imports but only calls for models these tests never build."""


def efficientnet_v2_s(*args, **kwargs):
    raise NotImplementedError("the test torchvision stand-in has no efficientnet_v2_s; install real torchvision")
