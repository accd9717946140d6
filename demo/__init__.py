"""The offline demo: procedural faces and a small gallery website served from memory on 127.0.0.1."""

from demo.faces import draw_face, draw_non_face, make_faces
from demo.gallery import DemoGallery, GalleryImage, Request

__all__ = ["DemoGallery", "GalleryImage", "Request", "draw_face", "draw_non_face", "make_faces"]
