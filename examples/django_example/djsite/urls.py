from django.urls import path
from djreports import views

urlpatterns = [
    path("", views.home),
    path("reports/<int:year>", views.start_report),
]
